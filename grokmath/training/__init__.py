"""Training: the one loop, its step (eager or captured), the schedule, losses, metrics, whole runs and their plots."""
