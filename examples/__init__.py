"""The source documents' examples, one runnable script per document (`symgrad examples`),
and problems written with the operators real models need (`symgrad examples run lj`)."""
EXAMPLES = {
    "000": ("ex000_backward_gradient", "what the gradient argument of backward does: vᵀJ"),
    "001": ("ex001_tensors_and_autograd", "leaves, accumulation, view, no_grad"),
    "002": ("ex002_computational_graph", "the computational graph: J on edges, adjoints P"),
    "003": ("ex003_training_loop", "backward() and zero_grad() in a training loop"),
    "004": ("ex004_backward_first_argument", "the first parameter of backward"),
}
PROBLEMS = {
    "rosenbrock": ("ex101_rosenbrock_slices", "Rosenbrock in 10,000 dimensions, with slices"),
    "logsumexp": ("ex102_stable_logsumexp", "logsumexp(400·logits) without overflow"),
    "cross_entropy": ("ex103_cross_entropy_labels", "softmax cross-entropy, labels by gather"),
    "lj": ("ex104_lennard_jones_pairs", "Lennard-Jones energy over index arrays of pairs"),
    "piecewise": ("ex105_piecewise_sympy", "a sympy.Piecewise through from_sympy"),
}
