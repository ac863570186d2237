"""The `llama-cpp` provider: a GGUF model run in this process by llama-cpp-python
(the optional extra: `pip install 'agentserver[local]'`).

`model_path` is a file path (relative to the working directory), or
`pkg:PACKAGE/FILE.gguf` for a model file shipped inside an installed package: the
package's folder is found with `importlib.util.find_spec`, without importing it.

- The model is loaded on first use, in a worker thread, once (a caller cancelled
  while it loads leaves the load running for the next caller).
- One generation at a time (a lock): the model holds one context.
- Generation runs in a worker thread, streamed token by token; the event loop side
  hands each piece to `on_token` and, when its caller is cancelled, tells the thread
  to stop before the next token and waits for it (a few milliseconds), so the next
  generation never overlaps.
- A GBNF grammar is checked before use (llama.cpp crashes the process on a grammar it
  cannot parse): an invalid one fails the request with the parser's complaint on
  stderr, and an empty one is refused.
- Usage: the prompt's tokens as evaluated, and the tokens generated (the sampling
  steps, less the one that chose to stop).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import threading
from pathlib import Path
from typing import Any, Callable

from agentserver.llm.providers.base import BackendFailure, ChatRequest, FailureKind, TokenCallback
from agentserver.llm.settings import BackendConfig
from agentserver.llm.types import Completion, LlmConfigError, Usage

__all__ = ["LlamaCppProvider", "resolve_model_path", "llama_cpp_missing", "LOCAL_EXTRA_HINT"]

LOCAL_EXTRA_HINT = "install the optional extra: pip install 'agentserver[local]' (llama-cpp-python)"


def llama_cpp_missing() -> bool:
    """Whether llama-cpp-python is absent (checked without importing it)."""
    return importlib.util.find_spec("llama_cpp") is None


def resolve_model_path(spec: str) -> Path:
    """The GGUF file `spec` names: a path, or `pkg:PACKAGE/FILE.gguf` inside an
    installed top-level package (found without importing it). Raises ValueError
    saying what is missing."""
    if spec.startswith("pkg:"):
        package, _, file = spec[len("pkg:"):].partition("/")
        if not package or not file or "." in package:
            raise ValueError(f"{spec!r}: a package model path looks like pkg:PACKAGE/FILE.gguf "
                             "(PACKAGE a top-level package name)")
        try:
            found = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            found = None
        if found is None or not found.submodule_search_locations:
            raise ValueError(f"{spec!r}: package {package!r} is not installed")
        path = Path(list(found.submodule_search_locations)[0]) / file
    else:
        path = Path(spec).expanduser()
    if not path.is_file():
        raise ValueError(f"{spec!r}: no model file at {path}")
    return path


class _Stop(Exception):
    """The caller went away; the worker thread stopped between tokens."""


class LlamaCppProvider:
    """A local model, loaded lazily, generating one request at a time."""

    def __init__(self, backend: BackendConfig) -> None:
        if llama_cpp_missing():
            raise LlmConfigError(f"backend {backend.name!r} (provider llama-cpp) needs llama-cpp-python: "
                                 f"{LOCAL_EXTRA_HINT}")
        if backend.model_path is None:
            raise LlmConfigError(f"backend {backend.name!r} (provider llama-cpp) needs model_path")
        self.backend = backend
        self._module: Any = None
        self._model: Any = None
        self._loading: asyncio.Future[Any] | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"<LlamaCppProvider backend={self.backend.name!r}>"

    async def complete(self, request: ChatRequest, *, on_token: TokenCallback | None = None) -> Completion:
        async with self._lock:
            if self._closed:
                raise BackendFailure("the provider is closed", kind=FailureKind.BACKEND)
            model = await self._loaded()
            loop = asyncio.get_running_loop()
            pieces: asyncio.Queue[str | None] = asyncio.Queue()
            stop = threading.Event()

            def push(piece: str | None) -> None:
                loop.call_soon_threadsafe(pieces.put_nowait, piece)

            work = loop.run_in_executor(None, self._generate, model, request, stop, push)
            try:
                while (piece := await pieces.get()) is not None:
                    if on_token is not None:
                        on_token(piece)
                text, usage = await work
            finally:
                stop.set()
                await _outlive_cancellation(work)
        model_name = request.model or Path(self.backend.model_path or "local").name
        return Completion(text, usage, self.backend.name, model_name)

    async def aclose(self) -> None:
        """Drop the model, after the generation under way (if any) has ended."""
        async with self._lock:
            self._closed = True
            if self._loading is not None:  # a load whose caller was cancelled may still be running
                loading, self._loading = self._loading, None
                await _outlive_cancellation(loading)
                if self._model is None and not loading.cancelled() and loading.exception() is None:
                    self._model = loading.result()
            if self._model is not None:
                model, self._model = self._model, None
                close = getattr(model, "close", None)
                if callable(close):
                    await asyncio.to_thread(close)

    async def _loaded(self) -> Any:
        if self._model is not None:
            return self._model
        if self._loading is None:
            self._loading = asyncio.get_running_loop().run_in_executor(None, self._load)
        try:
            self._model = await asyncio.shield(self._loading)
        except asyncio.CancelledError:
            raise
        except BackendFailure:
            self._loading = None  # let a later request try again (the file may have been fixed)
            raise
        return self._model

    def _load(self) -> Any:
        """In a worker thread: import llama_cpp and load the model."""
        try:
            path = resolve_model_path(self.backend.model_path or "")
        except ValueError as exc:
            raise BackendFailure(f"cannot load the model: {exc}", kind=FailureKind.BACKEND) from None
        try:
            self._module = importlib.import_module("llama_cpp")
        except ImportError as exc:
            raise BackendFailure(f"cannot import llama_cpp ({exc}): {LOCAL_EXTRA_HINT}", kind=FailureKind.BACKEND) from None
        try:
            return self._module.Llama(model_path=str(path), n_ctx=self.backend.n_ctx,
                                      n_threads=self.backend.n_threads, verbose=False)
        except Exception as exc:  # llama-cpp-python raises ValueError and RuntimeError for bad files
            raise BackendFailure(f"cannot load the model {path}: {type(exc).__name__}: {exc}",
                                 kind=FailureKind.BACKEND) from None

    def _generate(self, model: Any, request: ChatRequest, stop: threading.Event,
                  push: Callable[[str | None], None]) -> tuple[str, Usage]:
        """In a worker thread: stream one chat completion, piece by piece, into `push`
        (then None), stopping between tokens once `stop` is set."""
        llama_cpp = self._module
        try:
            grammar = None
            if request.grammar is not None:
                self._check_grammar(model, request.grammar)
                grammar = llama_cpp.LlamaGrammar.from_string(request.grammar, verbose=False)
            steps: list[int] = []  # the prompt's length at each sampling step (a ctypes callback: must not raise)

            def count_step(input_ids: Any, scores: Any) -> Any:
                steps.append(len(input_ids))
                return scores

            options: dict[str, Any] = {}
            if request.temperature is not None:
                options["temperature"] = request.temperature
            chunks = model.create_chat_completion(
                messages=[{"role": m["role"], "content": m["content"]} for m in request.messages],
                max_tokens=request.max_tokens, grammar=grammar, stream=True,
                logits_processor=llama_cpp.LogitsProcessorList([count_step]), **options)
            text: list[str] = []
            finish = None
            try:
                for chunk in chunks:
                    if stop.is_set():
                        raise _Stop
                    choice = chunk["choices"][0]
                    piece = choice["delta"].get("content")
                    if piece:
                        text.append(piece)
                        push(piece)
                    finish = choice.get("finish_reason") or finish
            finally:
                chunks.close()
            # every sampling step made a token, except the one that chose the end (finish "stop")
            generated = len(steps) - (1 if finish == "stop" and steps else 0)
            return "".join(text), Usage(steps[0] if steps else 0, generated)
        except (_Stop, BackendFailure):
            raise
        except ValueError as exc:  # llama-cpp-python's word for a request it cannot serve (context too small)
            raise BackendFailure(f"the local model refused the request: {exc}", kind=FailureKind.REQUEST) from None
        except Exception as exc:
            raise BackendFailure(f"the local model failed: {type(exc).__name__}: {exc}",
                                 kind=FailureKind.BACKEND) from None
        finally:
            push(None)

    def _check_grammar(self, model: Any, grammar: str) -> None:
        """Parse `grammar` once with llama.cpp's own parser, which returns NULL (and
        writes why on stderr) for a grammar it cannot use."""
        if not grammar.strip():
            raise BackendFailure("the grammar is empty", kind=FailureKind.REQUEST)
        llama_cpp = self._module
        vocab = llama_cpp.llama_model_get_vocab(model.model)
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), b"root")
        if not sampler:
            raise BackendFailure("llama.cpp cannot parse the GBNF grammar (it needs a `root` rule; its parser "
                                 "wrote the details to stderr)", kind=FailureKind.REQUEST)
        llama_cpp.llama_sampler_free(sampler)


async def _outlive_cancellation(work: asyncio.Future[Any]) -> None:
    """Wait until `work` (a worker thread's future) is done, even if cancelled while
    waiting (a thread cannot be cancelled, only asked to stop); then re-raise the
    cancellation. The work's own outcome is left to whoever awaits it."""
    cancelled = False
    while not work.done():
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            if work.done():
                break
            cancelled = True
        except BaseException:
            break
    if work.done() and not work.cancelled():
        work.exception()  # retrieved: asyncio would otherwise log it as never retrieved
    if cancelled:
        raise asyncio.CancelledError

