"""A finished root laid out for others: VBench, Hugging Face datasets, WebDataset, a gallery."""
