"""The engine: which layers are inspected and how (``walk``, ``adapters``), and the hooked pass.

A layer kind is one module in ``adapters``; ``walk`` is the one walker over the model that asks
each adapter, in order, whether a layer is its kind.
"""
