"""The NeuMeta library: plain PyTorch, no Kedro. Every idea of the method is one small module here."""
