"""Other codebases' weights and formats: TransformerLens, the seed notebooks, safetensors."""
