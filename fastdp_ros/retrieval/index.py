"""A faiss index of embeddings whose ids are rows of a table, saved beside a model.

`EmbeddingIndex` holds the faiss index (ids 0..N-1), a row table of named arrays with N rows
(at least `episode` and `frame`: where each embedding came from, plus whatever the policy
looks up, e.g. `action`) and metadata that ties it to the model that made the embeddings:

    index/faiss.index          faiss's own binary format (faiss.serialize_index), never pickle
    index/table.safetensors    the row table
    index/index.json           kind, metric, dim, rows, embedding model hash, dataset fingerprint

Index kinds: "flat" (exact, the default), "ivf" (inverted lists, approximate, for large
datasets) and "hnsw" (graph, approximate). Metrics: "l2" (squared distance, smaller is
nearer), "ip" (inner product, larger is nearer) and "cosine" (inner product of L2-normalised
vectors). Vectors are stored as float32 or, to halve the memory, float16 (faiss's scalar
quantizer; search stays exhaustive for "flat"). GPU faiss is used for searching when the
installed faiss has CUDA support and sees a GPU; the CPU copy is what is saved.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from fastdp_ros.errors import ConfigError, DatasetError, ModelFileError

log = logging.getLogger(__name__)

INDEX_DIR = "index"
FAISS_FILE = "faiss.index"
TABLE_FILE = "table.safetensors"
META_FILE = "index.json"
INDEX_FORMAT_VERSION = 1

INDEX_KINDS = ("flat", "ivf", "hnsw")
METRICS = ("l2", "ip", "cosine")
ENCODINGS = ("float32", "float16")
GPU_MODES = ("auto", "off")
#: every row table names where its embeddings came from
REQUIRED_COLUMNS = ("episode", "frame")
#: fewer demonstrations than this make a lookup that replays one episode whatever it sees
MIN_EPISODES = 2
#: searches of at most this many queries run on one thread (see EmbeddingIndex.search)
FEW_QUERIES = 8


def import_faiss():
    """The faiss module, or a ConfigError saying how to install it."""
    try:
        import faiss
    except ImportError:
        raise ConfigError(
            "retrieval needs faiss: `pip install faiss-cpu` (or a faiss build with CUDA for GPU search)"
        ) from None
    return faiss


def file_hash(path: str | os.PathLike) -> str:
    """sha256 (first 16 hex digits) of a file: identifies the weights that made the embeddings."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:
        raise ModelFileError(f"cannot read {path}: {e.strerror}") from None
    return h.hexdigest()[:16]


@dataclass
class IndexConfig:
    """How to index: kind, metric, storage and the approximate kinds' knobs."""

    kind: str = "flat"  # flat | ivf | hnsw
    metric: str = "l2"  # l2 | ip | cosine
    encoding: str = "float32"  # float32 | float16
    nlist: int | None = None  # IVF cells; None: about 4 sqrt(N), with >= 39 training points per cell
    nprobe: int = 16  # IVF cells visited per query
    hnsw_m: int = 32  # HNSW neighbours per node
    ef_construction: int = 80
    ef_search: int = 64
    gpu: str = "auto"  # auto: GPU faiss when available | off

    def __post_init__(self):
        for name, value, allowed in (("kind", self.kind, INDEX_KINDS), ("metric", self.metric, METRICS),
                                     ("encoding", self.encoding, ENCODINGS), ("gpu", self.gpu, GPU_MODES)):
            if value not in allowed:
                raise ConfigError(f"index {name} must be one of {allowed}, got {value!r}")
        if self.nlist is not None and self.nlist < 1:
            raise ConfigError(f"index nlist must be >= 1, got {self.nlist}")
        if min(self.nprobe, self.hnsw_m, self.ef_construction, self.ef_search) < 1:
            raise ConfigError("index nprobe, hnsw_m, ef_construction and ef_search must be >= 1")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "IndexConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown index options {unknown}")
        return cls(**d)


@dataclass
class SearchResult:
    """k nearest rows of each query: ids (B, k) int64 and scores (B, k) float32.

    Scores are squared L2 distances for metric "l2" (ascending) and similarities for "ip" and
    "cosine" (descending). An approximate index may return id -1 when it finds fewer than k.
    """

    ids: np.ndarray
    scores: np.ndarray


def _as_matrix(x, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] < 1:
        raise ConfigError(f"{what} must be a (N, dim) array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ConfigError(f"{what} contain NaN or inf")
    return np.ascontiguousarray(x)


def _normalized(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class EmbeddingIndex:
    """faiss index + row table + provenance; build, search, save into / load from a model dir."""

    def __init__(self, index, table: dict[str, np.ndarray], meta: dict, config: IndexConfig):
        self._cpu_index = index
        self._search_index = None  # the GPU copy (or the CPU index), made on first search
        self._gpu_resources = None  # must outlive a GPU copy
        self.table = table
        self.meta = meta
        self.config = config

    # --- construction ------------------------------------------------------------------------

    @classmethod
    def build(cls, embeddings, table: dict[str, np.ndarray], *, model_hash: str, dataset_fingerprint: str,
              config: IndexConfig | None = None, extra_meta: dict | None = None,
              min_episodes: int = MIN_EPISODES) -> "EmbeddingIndex":
        """Index `embeddings` (N, dim); row i of `table` describes embedding i.

        model_hash names the weights that computed the embeddings (loading checks it);
        dataset_fingerprint the demonstrations they came from (provenance).
        """
        faiss = import_faiss()
        config = config or IndexConfig()
        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or len(x) == 0:
            raise DatasetError(f"nothing to index: got embeddings of shape {x.shape}; "
                               "the dataset has no usable frames")
        x = _as_matrix(x, "embeddings")
        table = {k: np.ascontiguousarray(v) for k, v in table.items()}
        missing = [c for c in REQUIRED_COLUMNS if c not in table]
        if missing:
            raise ConfigError(f"the row table needs columns {missing}")
        wrong = {k: v.shape[0] for k, v in table.items() if v.ndim == 0 or v.shape[0] != len(x)}
        if wrong:
            raise ConfigError(f"row table columns {wrong} do not have one row per embedding ({len(x)})")
        n_episodes = len(np.unique(table["episode"]))
        if n_episodes < min_episodes:
            raise DatasetError(
                f"the index would hold {n_episodes} demonstration episode(s); retrieval needs at least "
                f"{min_episodes}, otherwise every lookup replays the same demonstration"
            )
        index = _indexed(faiss, config, x)
        meta = {
            "format_version": INDEX_FORMAT_VERSION, "kind": config.kind, "metric": config.metric,
            "dim": int(x.shape[1]), "rows": int(len(x)), "episodes": int(n_episodes),
            "embedding_model_hash": str(model_hash), "dataset_fingerprint": str(dataset_fingerprint),
            "faiss_version": getattr(faiss, "__version__", "unknown"), **(extra_meta or {}),
        }
        log.info("indexed %d embeddings of dim %d from %d episodes (%s, %s)", len(x), x.shape[1], n_episodes,
                 config.kind, config.metric)
        return cls(index, table, meta, config)

    @classmethod
    def exact(cls, vectors, metric: str = "l2") -> "EmbeddingIndex":
        """An exact in-memory index of `vectors` (N, dim) with no row table: the OOD monitors'
        kNN (runtime.ood), searched on the CPU like a policy's lookup."""
        faiss = import_faiss()
        config = IndexConfig(kind="flat", metric=metric, gpu="off")
        x = _as_matrix(vectors, "indexed vectors")
        if len(x) == 0:
            raise ConfigError("nothing to index: no vectors")
        meta = {"format_version": INDEX_FORMAT_VERSION, "kind": "flat", "metric": metric, "dim": int(x.shape[1]),
                "rows": int(len(x)), "episodes": 0, "embedding_model_hash": "", "dataset_fingerprint": ""}
        return cls(_indexed(faiss, config, x), {}, meta, config)

    # --- queries -----------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def metric(self) -> str:
        return self.config.metric

    @property
    def model_hash(self) -> str:
        return self.meta["embedding_model_hash"]

    def __len__(self) -> int:
        return int(self.meta["rows"])

    def _searcher(self):
        if self._search_index is None:
            self._search_index, self._gpu_resources = _maybe_on_gpu(self._cpu_index, self.config)
        return self._search_index

    def search(self, queries, k: int = 1) -> SearchResult:
        """The k nearest rows of each query (B, dim) (or one query (dim,))."""
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None]
        q = _as_matrix(q, "queries")
        if q.shape[1] != self.dim:
            raise ConfigError(f"queries have dim {q.shape[1]}, the index holds dim {self.dim}")
        k = int(k)
        if not 1 <= k <= len(self):
            raise ConfigError(f"k must be in [1, {len(self)}] (the rows indexed), got {k}")
        if self.config.metric == "cosine":
            q = _normalized(q)
        if len(q) > FEW_QUERIES:
            scores, ids = self._searcher().search(q, k)
        else:
            # a control-loop lookup is microseconds of work: faiss's OpenMP workers would only wake
            # to contend with the engine's own thread pool (ALT through ONNX Runtime on 2 cores:
            # p99 13 ms with them, under 2 ms without)
            faiss = import_faiss()
            threads = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)
            try:
                scores, ids = self._searcher().search(q, k)
            finally:
                faiss.omp_set_num_threads(threads)
        return SearchResult(ids=ids.astype(np.int64), scores=scores.astype(np.float32))

    def nbytes(self) -> int:
        """Memory of the stored vectors (codes) plus the row table, in bytes."""
        codes = len(self) * self.dim * (2 if self.config.encoding == "float16" else 4)
        return int(codes + sum(v.nbytes for v in self.table.values()))

    # --- persistence ---------------------------------------------------------------------------

    def save(self, model_dir: str | os.PathLike) -> Path:
        """Write model_dir/index/ (replacing an existing one only once the new one is complete)."""
        faiss = import_faiss()
        model_dir = Path(model_dir)
        target = model_dir / INDEX_DIR
        try:
            model_dir.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=model_dir, prefix=f".{INDEX_DIR}."))
            tmp.chmod(0o755)  # mkdtemp makes a private folder; model directories are shared
        except OSError as e:
            raise ModelFileError(f"cannot write an index into {model_dir}: {e.strerror}") from None
        try:
            (tmp / FAISS_FILE).write_bytes(faiss.serialize_index(self._cpu_index).tobytes())
            save_file(self.table, str(tmp / TABLE_FILE))
            meta = {**self.meta, "config": self.config.to_dict()}
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("saved index (%d rows) to %s", len(self), target)
        return target

    @classmethod
    def load(cls, model_dir: str | os.PathLike, expected_model_hash: str | None = None,
             expected_dim: int | None = None) -> "EmbeddingIndex":
        """Read model_dir/index/; a missing, corrupted or foreign index is a ModelFileError.

        expected_model_hash: the hash of the weights that will embed queries; an index built
        from other weights would return wrong neighbours, so it is refused.
        """
        faiss = import_faiss()
        folder = Path(model_dir) / INDEX_DIR
        meta_path = folder / META_FILE
        if not meta_path.is_file():
            raise ModelFileError(f"{model_dir} has no retrieval index ({meta_path} is missing); "
                                 "build one with `fastdp index` (RAGDP) or `fastdp train --policy alt`")
        try:
            meta = json.loads(meta_path.read_text())
            config = IndexConfig.from_dict(meta.pop("config"))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ConfigError) as e:
            raise ModelFileError(f"{meta_path} is not a valid index description ({e})") from None
        if meta.get("format_version", 0) > INDEX_FORMAT_VERSION:
            raise ModelFileError(f"{meta_path} has format_version {meta['format_version']}, newer than this "
                                 f"fastdp_ros understands ({INDEX_FORMAT_VERSION}); upgrade fastdp_ros")
        if expected_model_hash is not None and meta.get("embedding_model_hash") != expected_model_hash:
            raise ModelFileError(
                f"the index in {folder} was built from embedding model {meta.get('embedding_model_hash')}, "
                f"but {model_dir} embeds with model {expected_model_hash}: its neighbours would be wrong; "
                "rebuild the index for this model"
            )
        if expected_dim is not None and meta.get("dim") != expected_dim:
            raise ModelFileError(f"the index in {folder} holds dim-{meta.get('dim')} embeddings, "
                                 f"the model embeds to dim {expected_dim}")
        try:
            index = faiss.deserialize_index(np.fromfile(folder / FAISS_FILE, dtype=np.uint8))
        except (OSError, RuntimeError) as e:
            raise ModelFileError(f"{folder / FAISS_FILE} cannot be read as a faiss index "
                                 f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        try:
            table = load_file(str(folder / TABLE_FILE))
        except (SafetensorError, OSError, ValueError) as e:
            raise ModelFileError(f"{folder / TABLE_FILE} cannot be read as safetensors ({e})") from None
        rows = int(meta.get("rows", -1))
        if index.ntotal != rows or index.d != meta.get("dim") or any(v.shape[0] != rows for v in table.values()):
            raise ModelFileError(f"the files in {folder} disagree on the number of rows or the dimension "
                                 f"(index.json: {rows} x {meta.get('dim')}, faiss: {index.ntotal} x {index.d}); "
                                 "rebuild the index")
        _set_search_params(faiss, index, config)
        return cls(index, table, meta, config)


def _indexed(faiss, config: IndexConfig, x: np.ndarray):
    """A faiss index of `config` holding the rows of `x` (normalised first for cosine)."""
    if config.metric == "cosine":
        x = _normalized(x)
    index = _make_faiss_index(faiss, config, x.shape[1], len(x))
    if not index.is_trained:
        index.train(x)
    index.add(x)
    return index


def _faiss_metric(faiss, metric: str):
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def _default_nlist(n: int) -> int:
    # faiss wants >= 39 training points per cell; 4 sqrt(N) cells is its usual starting point
    return int(max(1, min(4 * np.sqrt(n), n // 39)))


def _make_faiss_index(faiss, config: IndexConfig, dim: int, n: int):
    metric = _faiss_metric(faiss, config.metric)
    if config.kind == "flat":
        if config.encoding == "float16":
            return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, metric)
        return faiss.IndexFlatL2(dim) if config.metric == "l2" else faiss.IndexFlatIP(dim)
    if config.kind == "ivf":
        nlist = min(config.nlist or _default_nlist(n), n)
        quantizer = faiss.IndexFlatL2(dim) if config.metric == "l2" else faiss.IndexFlatIP(dim)
        if config.encoding == "float16":
            index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_fp16, metric)
        else:
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, metric)
    else:
        if config.encoding == "float16":
            index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_fp16, config.hnsw_m, metric)
        else:
            index = faiss.IndexHNSWFlat(dim, config.hnsw_m, metric)
        index.hnsw.efConstruction = config.ef_construction
    _set_search_params(faiss, index, config)
    return index


def _set_search_params(faiss, index, config: IndexConfig) -> None:
    if config.kind == "ivf":
        faiss.extract_index_ivf(index).nprobe = config.nprobe
    elif config.kind == "hnsw":
        index.hnsw.efSearch = config.ef_search


def _maybe_on_gpu(index, config: IndexConfig):
    """(index to search, GPU resources or None): a GPU copy of `index` when faiss has CUDA and
    sees a GPU and the kind runs there, else `index` itself."""
    if config.gpu == "off" or config.kind == "hnsw":  # faiss has no GPU HNSW
        return index, None
    faiss = import_faiss()
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        return index, None
    resources = faiss.StandardGpuResources()
    try:
        gpu_index = faiss.index_cpu_to_gpu(resources, 0, index)
    except RuntimeError as e:  # e.g. a float16 scalar quantizer the GPU build lacks
        log.warning("faiss GPU search unavailable (%s); searching on the CPU", str(e).splitlines()[0])
        return index, None
    log.info("faiss index moved to GPU 0")
    return gpu_index, resources
