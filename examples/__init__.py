"""The source documents' examples, one runnable script per document (`symgrad examples`)."""
EXAMPLES = {
    "000": ("ex000_backward_gradient", "what the gradient argument of backward does: vᵀJ"),
    "001": ("ex001_tensors_and_autograd", "leaves, accumulation, view, no_grad"),
    "002": ("ex002_computational_graph", "the computational graph: J on edges, adjoints P"),
    "003": ("ex003_training_loop", "backward() and zero_grad() in a training loop"),
    "004": ("ex004_backward_first_argument", "the first parameter of backward"),
}
