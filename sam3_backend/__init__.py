"""sam3-backend: a Label Studio ML backend serving Meta's SAM 3 through transformers.

Layout: ``ls/`` is the Label Studio side (never imports torch), ``engine/`` the model side
(never sees Label Studio JSON); ``types`` holds the torch-free values that cross between them,
and ``service``/``app`` are the only modules that know both.
"""

__version__ = "0.1.0"
