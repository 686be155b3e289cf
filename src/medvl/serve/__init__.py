"""Serving: a FAISS + SQLite case index and a FastAPI service with a web page.

Modules (one job each): ``index`` (vectors + case store on disk), ``build`` (manifest -> index),
``images`` (upload decoding, DICOM de-identification, model input, thumbnails), ``zeroshot``
(card prompt ensembles -> probabilities), ``batching`` (asyncio micro-batcher), ``security``
(tokens, limits, sniffing), ``metrics`` (Prometheus text), ``app`` (the FastAPI factory).
Heavy imports (torch, faiss, fastapi) stay inside those modules so ``import medvl.serve`` is cheap.
"""
