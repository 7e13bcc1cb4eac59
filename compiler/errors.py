"""The compiler's exception types (a module of their own so every stage can raise them)."""


class GraphError(ValueError):
    """A graph was built or used in a way that cannot work."""


class ShapeError(ValueError):
    """Operand shapes do not fit an operator."""
