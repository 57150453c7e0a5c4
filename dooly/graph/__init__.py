"""torch.fx side of Dooly: capture, normalisation, regions and canonical units."""
