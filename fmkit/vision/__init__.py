"""Tensor operations behind the vision pretext tasks, kept free of data loading so each can be tested alone."""
