"""Training the project's own default model: a synthetic captioned dataset, then the two LDM stages."""
