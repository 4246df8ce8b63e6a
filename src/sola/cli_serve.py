"""`sola serve` on the command line (the service is `sola.serve`)."""

from __future__ import annotations

from .cli_common import store_path


def _serve(args) -> None:
    from .serve import serve

    serve(store_path(args), args.model, host=args.host, port=args.port, token_file=args.token_file,
          read_token=args.read_token, single_model=args.single_model, engine=args.engine, engine_url=args.engine_url,
          engine_port=args.engine_port)


def add_serve_parser(commands, common) -> None:
    serve = commands.add_parser("serve", parents=[common], help="edit, ask and undo over HTTP and in a browser",
                                description="Serve the store: a JSON API (/v1/edits, /v1/ask, OpenAI-compatible "
                                "/v1/completions and /v1/chat/completions, /metrics, /docs) and a web page at /. "
                                "Writes need the bearer token in --token-file. See docs/serving.md.")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; another address "
                       "needs --token-file)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--token-file", help="the bearer token for writes; created (mode 0600, a random token) if "
                       "missing (default: $SOLA_HOME/serve.token)")
    serve.add_argument("--read-token", action="store_true", help="require the token for reads too")
    serve.add_argument("--single-model", action="store_true", help="one copy of the model (half the memory); asks "
                       "then wait while an edit trains")
    serve.add_argument("--engine", choices=["vllm"], help="answer through vLLM, started here from the environment "
                       "`make engine-vllm` creates (SoLA routes; vLLM generates with the routed edit's adapter)")
    serve.add_argument("--engine-url", help="answer through a vLLM server already running at this URL (started with "
                       "--enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)")
    serve.add_argument("--engine-port", type=int, default=8100, help="the port of the vLLM that --engine starts")
    serve.set_defaults(run=_serve)
