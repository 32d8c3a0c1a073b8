"""Sessions: the model, sealing, cookie chunking, and the stores."""
