"""SAR autoencoders (`medrecipes.models.sar`)."""
