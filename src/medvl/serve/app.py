"""The FastAPI service: embed, zero-shot, similar-case search, health, metrics and a web page.

``create_app(encoder, index_dir, card, settings)`` takes an already loaded encoder so tests can
inject a tiny model and the CLI loads the real one exactly once. Model and index work goes
through :class:`~medvl.serve.batching.MicroBatcher` s: concurrent requests share one forward
pass (and one FAISS search call), which is what keeps latency flat under load on a CPU.

Privacy rules enforced here: no client-supplied filesystem path is ever used; uploads are
decoded in memory (DICOM de-identified first, see :mod:`medvl.serve.images`); log lines carry
route, status and timing only, never report text, query text or patient fields.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.formparsers import MultiPartException, MultiPartParser

from medvl import __version__
from medvl.data.card import DatasetCard, card_from_dict
from medvl.errors import ImageReadError, MedvlError
from medvl.serve.batching import MicroBatcher
from medvl.serve.images import (
    DecodedImage,
    UnsupportedMediaError,
    decode_upload,
    encoder_spatial_dims,
    model_pixels,
    to_model_input,
)
from medvl.serve.index import CaseIndex, CaseRecord
from medvl.serve.metrics import CONTENT_TYPE, Metrics, MetricsMiddleware
from medvl.serve.security import BearerAuthMiddleware, BodyLimitMiddleware, SecurityHeadersMiddleware
from medvl.serve.zeroshot import ZeroShotHead

log = logging.getLogger("medvl.serve")
STATIC_DIR = Path(__file__).parent / "static"
MAX_TEXT_CHARS = 2000
MAX_TEXTS = 64
# The page loads only its own files; thumbnails are data: URIs. Blocks injected scripts even if a
# report text ever reached innerHTML by mistake.
PAGE_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


@dataclass
class ServeSettings:
    """Runtime knobs of the service (the CLI maps its options onto these)."""

    token: str | None = None
    max_upload_mb: float = 10.0
    max_batch: int = 16
    max_wait_ms: float = 2.0
    max_k: int = 50
    thumbnails: bool = True


# ------------------------------------------------------------------------------ request/response models
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbedTextRequest(_Strict):
    """Give ``text`` (one string) or ``texts`` (a list)."""

    text: str | None = Field(None, min_length=1, max_length=MAX_TEXT_CHARS)
    texts: list[str] | None = Field(None, min_length=1, max_length=MAX_TEXTS)

    @model_validator(mode="after")
    def _exactly_one(self) -> EmbedTextRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of 'text' or 'texts'")
        if self.texts is not None and any(not t or len(t) > MAX_TEXT_CHARS for t in self.texts):
            raise ValueError(f"each text must have 1..{MAX_TEXT_CHARS} characters")
        return self

    def items(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


class SearchTextRequest(_Strict):
    text: str = Field(..., min_length=1, max_length=MAX_TEXT_CHARS, description="Report-like query text.")
    k: int = Field(10, ge=1, le=100, description="Number of cases to return (capped by the server's max_k).")
    space: Literal["image", "report"] = Field("image", description="Search image vectors or report vectors.")


class ImageInfo(BaseModel):
    format: str
    shape: list[int]
    modality: str | None = None
    photometric: str | None = None
    deidentified: bool | None = None


class EmbedResponse(BaseModel):
    kind: Literal["image", "text"]
    model: str
    dim: int
    embeddings: list[list[float]]
    image: ImageInfo | None = None


class ClassProbability(BaseModel):
    name: str
    probability: float


class ZeroShotResponse(BaseModel):
    model: str
    card: str
    task: str
    mode: Literal["softmax", "pairwise"]
    classes: list[ClassProbability]
    image: ImageInfo


class SearchHit(BaseModel):
    id: int
    score: float
    image: str
    text: str
    labels: dict[str, float]
    split: str
    thumbnail: str | None = Field(None, description="base64 PNG")


class SearchResponse(BaseModel):
    query: Literal["text", "image"]
    space: Literal["image", "report"]
    k: int
    results: list[SearchHit]
    image: ImageInfo | None = None


class ReportResponse(BaseModel):
    model: str
    report: str = Field(..., description="Draft report written by the model's caption decoder; not a diagnosis.")
    finished: bool = Field(..., description="False when the report was cut at max_tokens.")
    method: Literal["greedy", "beam"]
    image: ImageInfo


class Health(BaseModel):
    status: str
    version: str
    model: str
    embed_dim: int
    has_text: bool
    index_size: int
    index_kind: str | None
    zero_shot: bool
    classes: list[str]
    writes_reports: bool = Field(False, description="POST /v1/report is available (the model has a caption decoder)")


class ErrorBody(BaseModel):
    detail: Any


def _file_schema(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    props: dict[str, Any] = {"file": {"type": "string", "format": "binary",
                                      "description": "PNG, JPEG, TIFF or DICOM (sniffed by content)."}}
    props.update(extra or {})
    return {"type": "object", "properties": props, "required": ["file"]}


_ERRORS = {code: {"model": ErrorBody, "description": desc} for code, desc in (
    (400, "Malformed request or undecodable image"), (401, "Missing or invalid bearer token"),
    (409, "Not available on this server (no index, card or text tower)"), (413, "Upload too large"),
    (415, "Unsupported media type"), (422, "Invalid parameters"))}


def _openapi_body(json_schema: dict[str, Any] | None, multipart_schema: dict[str, Any] | None) -> dict[str, Any]:
    content: dict[str, Any] = {}
    if json_schema is not None:
        content["application/json"] = {"schema": json_schema}
    if multipart_schema is not None:
        content["multipart/form-data"] = {"schema": multipart_schema}
    return {"requestBody": {"required": True, "content": content}}


# ------------------------------------------------------------------------------ helpers
def public_model_name(name: str) -> str:
    """``name`` with every filesystem path in it cut to its last two components.

    ``/srv/models/clip-tiny/last`` -> ``clip-tiny/last``; ``openclip:/m/x/biomed?text=/m/bert`` ->
    ``openclip:x/biomed?text=m/bert``; ``timm:resnet18`` unchanged. Two components keep a
    checkpoint directory such as ``last`` or ``step_000600`` recognisable without the server's layout.
    """
    def short(path: str) -> str:
        parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".", "~")]
        return "/".join(parts[-2:]) if parts else path

    return "".join(short(t) if ("/" in t or "\\" in t) else t for t in re.split(r"([:@?=&])", name))


def _logit_scale(encoder: Any) -> float | None:
    """The model's learned temperature when the encoder exposes it (medvl CLIP checkpoints do)."""
    value = getattr(encoder, "logit_scale", None)
    if value is None:
        model = getattr(encoder, "model", None)
        param = getattr(model, "logit_scale", None)
        if param is not None:
            value = float(torch.as_tensor(param).detach().float().exp())
            cap = getattr(getattr(model, "cfg", None), "max_logit_scale", None)
            if cap:
                value = min(value, float(cap))
    return float(value) if value is not None else None


def _vectors(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _safe_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic errors without the offending input values (they may be report text)."""
    return [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors(include_url=False, include_input=False)]


def _image_info(decoded: DecodedImage) -> ImageInfo:
    return ImageInfo(**{k: v for k, v in decoded.meta.items() if k in ImageInfo.model_fields})


class _Service:
    """Holds the loaded encoder, index, zero-shot head and batchers for one app instance."""

    def __init__(self, encoder: Any, index: CaseIndex | None, card: DatasetCard | None, settings: ServeSettings,
                 metrics: Metrics):
        self.encoder = encoder
        self.index = index
        self.card = card
        self.settings = settings
        self.metrics = metrics
        full_name = str(getattr(encoder, "name", type(encoder).__name__))
        # Responses name the model, never where it lives on the server's disk; the path goes to the log.
        self.model_name = public_model_name(full_name)
        log.info("serving model %s (%s)", self.model_name, full_name)
        self.has_text = bool(getattr(encoder, "has_text", False))
        self.zero_shot = (ZeroShotHead(encoder, card, _logit_scale(encoder))
                          if card is not None and self.has_text else None)
        kw = {"max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms}
        self.image_batcher: MicroBatcher[torch.Tensor, np.ndarray] = MicroBatcher(
            self._encode_images, name="image", on_batch=lambda n: metrics.batch_size.observe(n, "image"), **kw)
        self.text_batcher: MicroBatcher[str, np.ndarray] = MicroBatcher(
            self._encode_texts, name="text", on_batch=lambda n: metrics.batch_size.observe(n, "text"), **kw)
        # FAISS answers in microseconds, so waiting to fill a search batch never pays: it takes what
        # is already queued (greedy), which still groups queries that arrive during a search.
        self.search_batcher: MicroBatcher[tuple[np.ndarray, int, str], list[tuple[float, CaseRecord]]] = MicroBatcher(
            self._search, name="search", on_batch=lambda n: metrics.batch_size.observe(n, "search"),
            max_batch=max(64, settings.max_batch), max_wait_ms=0.0)

    # -- batch functions (run in the batchers' worker threads) -----------------------------------
    def _encode_images(self, images: list[torch.Tensor]) -> list[np.ndarray]:
        return list(_vectors(self.encoder.encode_image(torch.stack(images))))

    def _encode_texts(self, texts: list[str]) -> list[np.ndarray]:
        return list(_vectors(self.encoder.encode_text(list(texts))))

    def _search(self, queries: list[tuple[np.ndarray, int, str]]) -> list[list[tuple[float, CaseRecord]]]:
        assert self.index is not None
        out: list[list[tuple[int, float]]] = [[] for _ in queries]
        for space in ("image", "text"):
            rows = [i for i, q in enumerate(queries) if q[2] == space]
            if not rows:
                continue
            k = max(queries[i][1] for i in rows)
            hits = self.index.search(np.stack([queries[i][0] for i in rows]), k, space=space)
            for i, h in zip(rows, hits, strict=True):
                out[i] = h[: queries[i][1]]
        ids = sorted({i for hits in out for i, _ in hits})
        records = {r.id: r for r in self.index.get(ids, thumbnails=self.settings.thumbnails)}
        return [[(score, records[i]) for i, score in hits] for hits in out]

    # -- async API used by the endpoints -----------------------------------------------------------
    async def embed_image(self, decoded: DecodedImage) -> np.ndarray:
        enc = self.encoder
        try:
            x = await run_in_threadpool(to_model_input, model_pixels(decoded, enc), enc.image_size, enc.in_chans,
                                        enc.mean, enc.std, encoder_spatial_dims(enc))
        except ImageReadError as exc:  # e.g. a 2D picture sent to a volume model
            raise HTTPException(400, f"cannot use the uploaded image: {exc.reason}") from exc
        return await self.image_batcher.submit(x)

    async def embed_text(self, text: str) -> np.ndarray:
        if not self.has_text:
            raise HTTPException(409, f"model {self.model_name!r} has no text tower; text queries are unavailable")
        return await self.text_batcher.submit(text)

    async def search(self, vector: np.ndarray, k: int, space: str) -> list[tuple[float, CaseRecord]]:
        if self.index is None:
            raise HTTPException(409, "this server was started without a case index; search is unavailable")
        if space == "report" and self.index.text_index is None:
            raise HTTPException(409, "this index has no report vectors (its model had no text tower)")
        k = min(k, self.settings.max_k)
        return await self.search_batcher.submit((vector, k, "text" if space == "report" else "image"))

    async def aclose(self) -> None:
        for b in (self.image_batcher, self.text_batcher, self.search_batcher):
            await b.aclose()
        if self.index is not None:
            self.index.close()


async def _read_upload(request: Request, settings: ServeSettings) -> tuple[bytes, dict[str, str]]:
    """Parse a multipart body fully in memory: returns the ``file`` bytes and the text fields.

    Starlette spools file parts over 1 MB to a temp file; raising the spool limit to the upload
    limit keeps uploads (possibly identifiable DICOM) off the disk entirely.
    """
    parser = MultiPartParser(request.headers, request.stream(), max_files=1, max_fields=8, max_part_size=4096)
    parser.spool_max_size = int(settings.max_upload_mb * 2**20) + 1
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise HTTPException(400, f"malformed multipart body: {exc.message}") from exc
    except (KeyError, ValueError) as exc:
        raise HTTPException(400, "malformed multipart body") from exc
    uploads = form.getlist("file")
    if len(uploads) > 1:
        raise HTTPException(422, "send one 'file' part per request")
    upload = uploads[0] if uploads else None
    if upload is None or isinstance(upload, str):
        raise HTTPException(422, "multipart body needs a 'file' part holding the image")
    data = await upload.read()
    await upload.close()
    if not data:
        raise HTTPException(400, "the uploaded file is empty")
    fields: dict[str, str] = {}
    for key, value in form.multi_items():
        if key == "file":
            continue
        if key in fields or not isinstance(value, str):
            raise HTTPException(422, f"form field {key!r} must appear once, as a plain value")
        fields[key] = value
    return data, fields


async def _read_json(request: Request, model: type[BaseModel]) -> Any:
    body = await request.body()
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPException(400, "request body is not valid JSON") from exc
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise HTTPException(422, _safe_errors(exc)) from exc


def _media(request: Request) -> str:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in ("application/json", "multipart/form-data"):
        return ctype
    raise HTTPException(415, "send application/json (text) or multipart/form-data with a 'file' part (image)")


async def _decode(data: bytes) -> DecodedImage:
    try:
        return await run_in_threadpool(decode_upload, data)
    except UnsupportedMediaError as exc:
        raise HTTPException(415, str(exc)) from exc
    except ImageReadError as exc:
        raise HTTPException(400, f"cannot decode the uploaded image: {exc.reason}") from exc


def _form_int(fields: dict[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = fields.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise HTTPException(422, f"form field {name!r} must be an integer") from exc
    if not lo <= value <= hi:
        raise HTTPException(422, f"form field {name!r} must be between {lo} and {hi}")
    return value


# ------------------------------------------------------------------------------ the app
def create_app(encoder: Any, index_dir: str | Path | CaseIndex | None = None, card: DatasetCard | None = None,
               settings: ServeSettings | None = None, report_writer: Any = "auto", seg_model: Any = None) -> FastAPI:
    """Build the service around a loaded ``encoder`` and an index directory (optional).

    ``card`` defaults to the card stored with the index; zero-shot needs a card and a text tower.
    ``report_writer`` (a :class:`medvl.generate.Captioner`) serves ``POST /v1/report``; ``"auto"``
    finds the caption decoder of the served medvl checkpoint, if it was trained with one.
    ``seg_model`` (a ``medvl train-seg`` checkpoint dir or model) serves box / trained-text prompts of
    ``POST /v1/segment``; text prompts also work without it (zero-shot grounding maps).
    """
    if isinstance(seg_model, (str, Path)):
        from medvl.segment.model import load_seg_model

        seg_model = load_seg_model(seg_model)
    settings = settings or ServeSettings()
    index = (index_dir if isinstance(index_dir, CaseIndex)
             else CaseIndex.open(index_dir) if index_dir is not None else None)
    if card is None and index is not None and index.card_yaml():
        import yaml

        card = card_from_dict(yaml.safe_load(index.card_yaml() or "") or {}, str(index.path / "card.yaml"))
    if index is not None:
        enc_dim = int(getattr(encoder, "embed_dim", index.meta.dim) or index.meta.dim)
        if enc_dim != index.meta.dim:
            raise MedvlError(f"encoder {getattr(encoder, 'name', '?')!r} gives {enc_dim}-d embeddings but index "
                             f"{index.path} holds {index.meta.dim}-d vectors (built with {index.meta.model!r})")
    metrics = Metrics()
    service = _Service(encoder, index, card, settings, metrics)
    if report_writer == "auto":
        from medvl.generate.captioner import report_writer_for

        report_writer = report_writer_for(encoder)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await service.aclose()

    app = FastAPI(title="medvl", version=__version__, lifespan=lifespan,
                  description="Medical vision-language service: embeddings, zero-shot findings and similar-case "
                              "search. Uploads are decoded in memory; DICOM is de-identified before use.")
    app.state.service = service
    app.state.metrics = metrics

    # -- errors ------------------------------------------------------------------------------------
    @app.exception_handler(MedvlError)
    async def _medvl_error(request: Request, exc: MedvlError) -> JSONResponse:
        log.info("request to %s failed: %s", request.url.path, type(exc).__name__)
        return JSONResponse({"detail": "request could not be processed: " + type(exc).__name__}, status_code=400)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        # The traceback frames, not the message: messages can quote data (a report, a DICOM value).
        log.error("internal error on %s: %s\n%s", request.url.path, type(exc).__name__,
                  "".join(traceback.format_tb(exc.__traceback__)))
        return JSONResponse({"detail": "internal server error"}, status_code=500)

    # -- page and probes ---------------------------------------------------------------------------
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Content-Security-Policy": PAGE_CSP})

    @app.get("/healthz", response_model=Health, tags=["service"])
    async def healthz() -> Health:
        """Liveness/readiness: the model and index are loaded (no authentication needed)."""
        return Health(status="ok", version=__version__, model=service.model_name,
                      embed_dim=int(getattr(encoder, "embed_dim", 0) or (index.meta.dim if index else 0)),
                      has_text=service.has_text, index_size=index.meta.count if index else 0,
                      index_kind=index.meta.kind if index else None, zero_shot=service.zero_shot is not None,
                      classes=card.class_names if card else [], writes_reports=report_writer is not None)

    @app.get("/metrics", response_class=PlainTextResponse, tags=["service"],
             responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"}})
    async def metrics_endpoint() -> PlainTextResponse:
        """Request counts, latency histograms and batch sizes in Prometheus text format."""
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE)

    # -- API ---------------------------------------------------------------------------------------
    embed_json = EmbedTextRequest.model_json_schema()

    @app.post("/v1/embed", response_model=EmbedResponse, responses=_ERRORS, tags=["api"],
              openapi_extra=_openapi_body(embed_json, _file_schema()))
    async def embed(request: Request) -> EmbedResponse:
        """Embed an uploaded image (multipart ``file``) or text (JSON ``text``/``texts``); L2-normalised."""
        if _media(request) == "application/json":
            body: EmbedTextRequest = await _read_json(request, EmbedTextRequest)
            vecs = [await service.embed_text(t) for t in body.items()]
            return EmbedResponse(kind="text", model=service.model_name, dim=len(vecs[0]),
                                 embeddings=[v.tolist() for v in vecs])
        data, _ = await _read_upload(request, settings)
        decoded = await _decode(data)
        vec = await service.embed_image(decoded)
        return EmbedResponse(kind="image", model=service.model_name, dim=len(vec), embeddings=[vec.tolist()],
                             image=_image_info(decoded))

    @app.post("/v1/zero-shot", response_model=ZeroShotResponse, responses=_ERRORS, tags=["api"],
              openapi_extra=_openapi_body(None, _file_schema()))
    async def zero_shot(request: Request) -> ZeroShotResponse:
        """Probability of each class of the dataset card for an uploaded image (DICOM included)."""
        head = service.zero_shot
        if _media(request) != "multipart/form-data":
            raise HTTPException(415, "zero-shot takes multipart/form-data with a 'file' part")
        if head is None:
            why = "no dataset card (pass --card or build the index from a manifest with card.yaml)" \
                if card is None else "the model has no text tower"
            raise HTTPException(409, f"zero-shot is unavailable on this server: {why}")
        data, _ = await _read_upload(request, settings)
        decoded = await _decode(data)
        vec = await service.embed_image(decoded)
        probs = head.probabilities(vec[None])[0]
        return ZeroShotResponse(model=service.model_name, card=head.card.name, task=head.card.task, mode=head.mode,
                                classes=[ClassProbability(name=c, probability=float(p))
                                         for c, p in zip(head.classes, probs, strict=True)],
                                image=_image_info(decoded))

    search_multipart = _file_schema({
        "k": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
        "space": {"type": "string", "enum": ["image", "report"], "default": "image"},
    })

    @app.post("/v1/search", response_model=SearchResponse, responses=_ERRORS, tags=["api"],
              openapi_extra=_openapi_body(SearchTextRequest.model_json_schema(), search_multipart))
    async def search(request: Request) -> SearchResponse:
        """Similar cases for a text (JSON) or an uploaded image (multipart), best first."""
        info = None
        if _media(request) == "application/json":
            body: SearchTextRequest = await _read_json(request, SearchTextRequest)
            vec = await service.embed_text(body.text)
            k, space, query = body.k, body.space, "text"
        else:
            data, fields = await _read_upload(request, settings)
            k = _form_int(fields, "k", 10, 1, 100)
            space = fields.get("space") or "image"
            if space not in ("image", "report"):
                raise HTTPException(422, "form field 'space' must be 'image' or 'report'")
            decoded = await _decode(data)
            info = _image_info(decoded)
            vec = await service.embed_image(decoded)
            query = "image"
        hits = await service.search(vec, k, space)
        results = [SearchHit(id=r.id, score=score, image=r.image, text=r.text, labels=r.labels, split=r.split,
                             thumbnail=base64.b64encode(r.thumbnail).decode() if r.thumbnail else None)
                   for score, r in hits]
        return SearchResponse(query=query, space=space, k=min(k, settings.max_k), results=results,  # type: ignore[arg-type]
                              image=info)

    report_multipart = _file_schema({
        "method": {"type": "string", "enum": ["greedy", "beam"], "default": "greedy"},
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": 256, "default": 60},
    })

    @app.post("/v1/report", response_model=ReportResponse, responses=_ERRORS, tags=["api"],
              openapi_extra=_openapi_body(None, report_multipart))
    async def draft_report(request: Request) -> ReportResponse:
        """Draft report for an uploaded image, written by the checkpoint's caption decoder."""
        if _media(request) != "multipart/form-data":
            raise HTTPException(415, "report takes multipart/form-data with a 'file' part")
        if report_writer is None:
            raise HTTPException(409, "report writing is unavailable: the served model has no caption decoder "
                                     "(train it with the 'caption' objective)")
        data, fields = await _read_upload(request, settings)
        method = fields.get("method") or "greedy"
        if method not in ("greedy", "beam"):
            raise HTTPException(422, "form field 'method' must be 'greedy' or 'beam'")
        limit = max(1, int(report_writer.decoder.cfg.context_length) - 1)
        max_tokens = _form_int(fields, "max_tokens", min(60, limit), 1, limit)
        decoded = await _decode(data)
        from medvl.generate.decoding import DecodeConfig

        cfg = DecodeConfig(method=method, max_new_tokens=max_tokens, num_beams=3)
        x = await run_in_threadpool(to_model_input, model_pixels(decoded, report_writer), report_writer.image_size,
                                    report_writer.in_chans,
                                    (0.0,) * report_writer.in_chans, (1.0,) * report_writer.in_chans)
        gen = (await run_in_threadpool(report_writer.generate, x[None], cfg))[0]
        return ReportResponse(model=service.model_name, report=report_writer.decode_tokens(gen.tokens),
                              finished=gen.finished, method=method, image=_image_info(decoded))  # type: ignore[arg-type]

    segment_multipart = _file_schema({
        "text": {"type": "string", "description": "a phrase, e.g. 'left pleural effusion'"},
        "box": {"type": "string", "description": "x0,y0,x1,y1 in the image's pixels"},
        "threshold": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5},
    })

    @app.post("/v1/segment", responses=_ERRORS, tags=["api"], openapi_extra=_openapi_body(None, segment_multipart))
    async def segment(request: Request) -> dict[str, Any]:
        """Mask of what a text phrase or a box points at on an uploaded image: PNG (base64) + summary."""
        from medvl.segment.service import mask_png, parse_box, segment_picture

        if _media(request) != "multipart/form-data":
            raise HTTPException(415, "segment takes multipart/form-data with a 'file' part and 'text' or 'box'")
        data, fields = await _read_upload(request, settings)
        try:
            box = parse_box(fields["box"]) if fields.get("box") else None
            threshold = float(fields.get("threshold") or 0.5)
        except (MedvlError, ValueError) as exc:
            raise HTTPException(422, str(exc)) from exc
        decoded = await _decode(data)
        try:
            mask, summary = await run_in_threadpool(segment_picture, decoded.pixels, encoder=encoder,
                                                    seg_model=seg_model, text=fields.get("text") or None, box=box,
                                                    threshold=threshold)
        except MedvlError as exc:
            raise HTTPException(422, str(exc)) from exc
        return {"model": service.model_name, "summary": summary, "image": _image_info(decoded).model_dump(),
                "mask_png": base64.b64encode(mask_png(mask)).decode("ascii")}

    # -- middleware (last added = outermost): metrics -> headers -> auth -> body limit -> app ---------
    max_bytes = int(settings.max_upload_mb * 2**20)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_bytes)
    app.add_middleware(BearerAuthMiddleware, token=settings.token)
    app.add_middleware(SecurityHeadersMiddleware)
    known = {"/", "/healthz", "/metrics", "/docs", "/openapi.json", "/v1/embed", "/v1/zero-shot", "/v1/search",
             "/v1/segment"}
    app.add_middleware(MetricsMiddleware, metrics=metrics, known_paths=lambda: known)
    return app


def serve_log_config(level: str = "info") -> dict[str, Any]:
    """uvicorn logging without access logs (they would record client IPs per request); our own
    middleware metrics cover traffic, and medvl.serve logs carry no request content."""
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"default": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "default",
                                 "stream": "ext://sys.stderr"}},
        "loggers": {"uvicorn": {"handlers": ["default"], "level": level.upper()},
                    "uvicorn.error": {"level": level.upper()},
                    "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
                    "medvl": {"handlers": ["default"], "level": level.upper()}},
    }


__all__ = ["ServeSettings", "create_app", "serve_log_config"]
