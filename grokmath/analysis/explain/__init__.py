"""Find and verify the algorithm inside a trained arithmetic model, scored against the task's ground truth.

    python scripts/explain.py runs/addition_5d_s129000

- truth: the ground-truth variables of every question (carries, sum-9s, cascades, borrows, sign)
- nodes: heads, neurons and MLPs at one position (`P14L0H1`, `P14L0M37`, `P14L0MLP`) and their ablation
- table: the node table (useful, fail %, impact, attends, tags) and attribution patching
- probes: linear probes for every variable at every (layer, position)
- claims: `P14L0H1 MakeCarry 2`-style claims, proposed from the table and tested by intervention
- sae_scores: SAE features scored against the variables
- figures, report: the quanta map and other figures; the whole report (explain())
"""
