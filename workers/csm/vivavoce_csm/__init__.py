"""vivavoce's CSM worker: Sesame CSM (transformers) behind the vivavoce worker protocol."""
