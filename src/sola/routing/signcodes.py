"""Sign codes of the routing keys: the candidates of a whole-table search at a million keys.

Each unit key is reduced to the signs of its projections on `BITS` random directions (SimHash, Charikar 2002). Two keys
at angle t disagree in a fraction t/pi of the bits, so the Hamming distance between codes ranks keys by angle, with a
noise that shrinks as the number of bits grows. 512 bits are 64 bytes a key (64 MB at 10^6 keys, against 1.5 GB of
float32 keys), and FAISS's popcount scan reads them in about 3 ms on two cores (a search, 3.4 ms in all).

The codes only propose candidates: `KeyTable` re-scores them exactly. A route is therefore always a real key's exact
distance under the threshold (the exact search would route the input too), and the answer differs from the exact
search's only when the exact nearest key is not among the candidates: measured by `benchmarks/router_scale.py`.

Nothing of this is stored: the directions are drawn from a fixed seed in each process and the codes are computed from
the keys when first needed (about 2 s at 10^6 keys), so they cannot go stale or disagree with the keys on disk.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

BITS = 512  # at 10^6 random keys, recall@1 0.99+ for inputs up to cosine distance 0.58 from their key (router_scale)
CANDIDATES = 512  # codes nearest in Hamming distance, re-scored exactly
_ENCODE_ROWS = 65536  # rows projected at once when encoding a whole table (a (rows, BITS) float32 temporary)


def _faiss():
    try:
        import faiss
    except ImportError as err:  # a dependency of sola; missing only from a broken install
        raise ImportError("the approximate key search needs FAISS: pip install faiss-cpu (or set "
                          "EditConfig.approximate_search_from=None to search every key exactly)") from err
    return faiss


class SignCodes:
    """The sign codes of a key table's rows, row for row (appended and compacted with it)."""

    def __init__(self, dim: int, bits: int = BITS, seed: int = 0) -> None:
        if bits % 64:
            raise ValueError(f"bits={bits} must be a multiple of 64")
        generator = torch.Generator().manual_seed(seed)
        self.planes = torch.randn(dim, bits, generator=generator)
        self._codes = np.zeros((0, bits // 8), dtype=np.uint8)
        self._count = 0
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0

    @property
    def nbytes(self) -> int:
        return self._count * self._codes.shape[1]

    def encode(self, vectors: torch.Tensor) -> np.ndarray:
        """(N, d) -> (N, bits / 8) packed sign bits."""
        parts = [np.packbits((vectors[a:a + _ENCODE_ROWS] @ self.planes > 0).numpy(), axis=1)
                 for a in range(0, len(vectors), _ENCODE_ROWS)]
        return np.concatenate(parts) if parts else np.zeros((0, self._codes.shape[1]), dtype=np.uint8)

    def append(self, vectors: torch.Tensor) -> None:
        codes = self.encode(vectors)
        end = self._count + len(codes)
        if end > len(self._codes):  # grown by doubling, as the keys
            grown = np.empty((max(end, 2 * len(self._codes), 64), self._codes.shape[1]), dtype=np.uint8)
            grown[:self._count] = self._codes[:self._count]
            self._codes = grown
        self._codes[self._count:end] = codes
        self._count = end

    def keep(self, mask: torch.Tensor) -> None:
        """Keep the rows where `mask` (of every row) is true, in order (the table removed the others)."""
        kept = self._codes[:self._count][mask.numpy()]
        self._count = len(kept)
        self._codes[:self._count] = kept

    def candidates(self, query: torch.Tensor, count: int = CANDIDATES) -> torch.Tensor:
        """(d,) unit query -> the rows of the `count` codes nearest to its code in Hamming distance, ascending."""
        faiss = _faiss()
        code = self.encode(query.reshape(1, -1))
        count = min(count, self._count)
        threads = max(1, min(torch.get_num_threads(), self._count // 65536))
        bounds = np.linspace(0, self._count, threads + 1).astype(np.int64)
        chunks = list(zip(bounds[:-1], bounds[1:]))

        def scan(chunk: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
            start, end = chunk
            found, rows = faiss.knn_hamming(code, self._codes[start:end], min(count, end - start))
            return found[0], rows[0] + start

        if len(chunks) == 1:
            found, rows = scan(chunks[0])
        else:  # one query scans on one thread in FAISS: split the rows between threads (the scan releases the GIL)
            if self._pool is None or self._pool_size != len(chunks) - 1:
                self._pool = ThreadPoolExecutor(len(chunks) - 1, thread_name_prefix="sola-signcodes")
                self._pool_size = len(chunks) - 1
            others = [self._pool.submit(scan, chunk) for chunk in chunks[1:]]
            parts = [scan(chunks[0])] + [future.result() for future in others]  # this thread scans one part too
            found, rows = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
            if len(rows) > count:
                best = np.argpartition(found, count - 1)[:count]
                rows = rows[best]
        return torch.from_numpy(np.sort(rows[rows >= 0]))
