"""Analysis of trained models; import the submodules directly, e.g.
`from grokmath.analysis.ablation import ablate`.

- ablation: zero / mean / resample ablation of heads, layers, MLPs and neurons (DataFrame + heatmaps)
- patching: activation patching from one input into another, by layer, position and head
- attribution: direct logit attribution, the logit lens, QK / OV circuits
- attention: attention patterns and their grids; the skip-trigram attention gradient
- evaluate: accuracy over many questions in nines, per case, with the failing questions
- fourier: digit and mod-p Fourier bases and projections of the model onto them
- sae, sae_source, sae_features, sae_run: sparse autoencoders on activations (the SAE and its training;
  activations from a run's model; the spliced-in check and feature statistics; the whole experiment)
- explain: the algorithm inside, found and verified: useful nodes (P14L0H1), attribution patching,
  probes and claims scored against the task's ground truth (scripts/explain.py)
- opening: open_run, how the analysis scripts load a run
- common, plots: answer-position logits and their score (grokmath.training.losses), batched variants, heatmaps
- interactive: plotly figures for notebooks (attention per head, loss curves, heatmaps); plotly optional
"""
