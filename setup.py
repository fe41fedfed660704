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
    install_requires=["torch>=2.1", "einops", "numpy", "matplotlib", "pandas", "tqdm"],
    # optional: dev runs the tests, which execute the notebooks (nbclient, nbformat, ipykernel) and their
    # interactive figures (plotly); notebooks is for people who open them (README: Notebooks)
    extras_require={"dev": ["pytest", "nbformat", "nbclient", "ipykernel", "plotly"],
                    "notebooks": ["plotly", "jupyterlab", "ipywidgets"],
                    # sweeps on a Ray cluster (scripts/sweep.py --ray); --tensorboard and --wandb tracking
                    "ray": ["ray"], "tensorboard": ["tensorboard"], "wandb": ["wandb"],
                    "tracking": ["tensorboard", "wandb"]},
)
