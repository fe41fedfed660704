from setuptools import find_packages, setup

setup(
    name="grokmath",
    version="0.1.0",
    description="A minimal, hookable transformer codebase for mechanistic interpretability of toy tasks",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["grokmath", "grokmath.*"]),
    python_requires=">=3.10",
    # torch is pinned by the install command in the README (CPU build); any recent torch works.
    # safetensors: small, no dependencies of its own; SAE folders and model exports are written in it (README)
    install_requires=["torch>=2.1", "einops", "numpy", "matplotlib", "pandas", "tqdm", "safetensors"],
    # optional: dev runs the tests, on every core (pytest-xdist: the suite is CPU-bound and single-threaded
    # per test), which execute the notebooks (nbclient, nbformat, ipykernel) and their interactive
    # figures (plotly); notebooks is for people who open them (README: Notebooks)
    extras_require={"dev": ["pytest", "pytest-xdist", "nbformat", "nbclient", "ipykernel", "plotly"],
                    "notebooks": ["plotly", "jupyterlab", "ipywidgets"],
                    # sweeps on a Ray cluster (scripts/sweep.py --ray); --tensorboard and --wandb tracking
                    "ray": ["ray"], "tensorboard": ["tensorboard"], "wandb": ["wandb"],
                    "tracking": ["tensorboard", "wandb"],
                    # optional interop, tested where installed (tests skip without them); separate
                    # extras: sae-lens pins TransformerLens 3.x
                    "tl4": ["transformer-lens>=4.3"], "saelens": ["sae-lens>=6"]},
)
