"""Command line: `slimbert <stage> [options]`, `slimbert run`, `slimbert config`.

Every stage is also runnable as `python -m pipeline.<stage>` with the same options.
A stage is a module `pipeline.<stage>` with:
    INPUTS: names of the upstream stages whose artifacts it reads (or a function
        `input_names(config)` when that depends on the config);
    fingerprint_config(config): the part of the config its output depends on;
    external_inputs(config) (optional): what it reads from outside the run directory
        (the user's data files, a checkpoint folder, a tfds dataset version), as
        name -> JSON-able description that changes when the content does (e.g. path,
        size and sha256 of each file); part of the fingerprint and the manifest;
    run(config, inputs, out_dir, work_dir) -> metrics: writes its files into out_dir
        (a stage whose run takes `force` also gets --force, e.g. to keep exports that
        fail verification).
out_dir is a temporary folder renamed into place when the stage returns; work_dir is
scratch space that survives a crash (training checkpoints, so a rerun resumes) and is
removed after success. This module turns that into an artifact directory with a manifest
(see artifacts.py).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import logging
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pipeline
from core import timing
from core.native_logs import quiet_native_startup
from pipeline import artifacts
from pipeline.config import EXPORT_TARGETS, PipelineConfig, SlimbertError, load_config

log = logging.getLogger("slimbert")

STAGE_ORDER = ("prepare", "finetune", "evaluate", "prune", "distill", "quantize", "export",
               "report")


def available_stages() -> list[str]:
    """Stages in pipeline order whose module exists in this version."""
    return [s for s in STAGE_ORDER if importlib.util.find_spec(f"pipeline.{s}") is not None]


def pipeline_stages(config: PipelineConfig) -> list[str]:
    """The stages `slimbert run` runs: the available ones a config does not switch off
    (a stage module may define `enabled(config)`, e.g. `distill.enabled`)."""
    return [name for name in available_stages()
            if getattr(stage_module(name), "enabled", lambda _: True)(config)]


def stage_module(name: str) -> ModuleType:
    return importlib.import_module(f"pipeline.{name}")


def execute(name: str, config: PipelineConfig, run_dir: Path, force: bool = False) -> Path:
    """Run stage `name` into `<run_dir>/<name>/` unless its artifact is up to date."""
    module = stage_module(name)
    names = module.input_names(config) if hasattr(module, "input_names") else module.INPUTS
    inputs = {dep: run_dir / dep for dep in names}
    for dep, path in inputs.items():
        if not (path / artifacts.MANIFEST).is_file():
            raise artifacts.ArtifactError(
                f"stage '{name}' needs the '{dep}' artifact at {path}; run "
                f"`slimbert {dep} --run-dir {run_dir}` (or `slimbert run`) first")
    out_dir = run_dir / name
    external = module.external_inputs(config) if hasattr(module, "external_inputs") else {}
    fingerprint = artifacts.fingerprint(name, module.fingerprint_config(config), inputs,
                                        external)
    work_root = run_dir / ".work"
    if not force and artifacts.is_up_to_date(out_dir, fingerprint):
        log.info("%s: up to date at %s (use --force to rerun)", name, out_dir)
        _remove_work(work_root, name)  # scratch of a run that another one superseded
        return out_dir
    log.info("%s: running -> %s", name, out_dir)
    started = time.time()
    new_run_dir = not run_dir.exists()
    work_dir = work_root / f"{name}-{fingerprint[:12]}"
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        with artifacts.atomic_dir(out_dir) as tmp, timing.recording() as timings:
            extra = {"force": force} if "force" in inspect.signature(module.run).parameters \
                else {}
            metrics = module.run(config, inputs, tmp, work_dir, **extra)
            manifest = artifacts.write_manifest(
                tmp, stage=name, config=config, fingerprint=fingerprint, inputs=inputs,
                external_inputs=external, metrics=metrics, started=started, timings=timings)
        _remove_work(work_root, name)
    finally:  # keep scratch only where it holds something to resume from
        for folder in (work_dir, work_root, *([run_dir] if new_run_dir else [])):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    log.info("%s: done in %.1f s (%s)", name, time.time() - started,
             ", ".join(f"{p} {t['seconds']:.1f} s" for p, t in manifest["timings"].items()))
    return out_dir


def _remove_work(work_root: Path, name: str) -> None:
    """Remove stage `name`'s resumable scratch (of any fingerprint) once it is done."""
    for done in work_root.glob(f"{name}-*"):
        shutil.rmtree(done, ignore_errors=True)
    if work_root.is_dir() and not any(work_root.iterdir()):
        work_root.rmdir()


def _common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", type=Path,
                        help="YAML config over the built-in defaults (e.g. configs/default.yaml)")
    parser.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                        dest="overrides",
                        help="override one config value, e.g. --set data.max_seq_length=64; "
                             "repeatable; values are parsed as YAML")
    parser.add_argument("--run-dir", metavar="DIR", type=Path,
                        help="where stage artifacts go (default: runs/<config name>)")
    parser.add_argument("--force", action="store_true",
                        help="rerun even if the artifact is up to date; for export, also "
                             "keep models that fail verification and unblessed models")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    from export.runtime import KERNELS  # stdlib imports only

    parser = argparse.ArgumentParser(
        prog="slimbert",
        description="Fine-tune, compress and ship a BERT text classifier.",
        epilog="Config keys and their meaning: `slimbert config --help`, pipeline/config.py.")
    parser.add_argument("--version", action="version", version=pipeline.__version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    stages = available_stages()
    run = sub.add_parser("run", help=f"run all stages in order ({' -> '.join(stages)})",
                         description="Run every stage in order; up-to-date stages are skipped.")
    _common_options(run)
    for name in stages:
        doc = (stage_module(name).__doc__ or "").strip()
        stage = sub.add_parser(name, help=doc.splitlines()[0] if doc else name,
                               description=doc,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        _common_options(stage)
    predict = sub.add_parser(
        "predict", help="classify texts with an exported model (SavedModel or TFLite)",
        description="Classify texts with any deliverable of `slimbert export`: a SavedModel "
                    "version folder or a .tflite file (its labels.txt, vocab.txt and "
                    "tokenizer.json beside it). Prints one line per text: label, its "
                    "probability, text (or JSON lines with --json).")
    predict.add_argument("model", type=Path, metavar="MODEL",
                         help="e.g. runs/default/export/tflite/slimbert-cpu.tflite or "
                              "runs/default/export/saved_model/slimbert/1")
    predict.add_argument("texts", nargs="*", metavar="TEXT", help="texts to classify")
    predict.add_argument("--file", type=Path, metavar="FILE",
                         help="also classify every non-empty line of this UTF-8 file "
                              "('-' for standard input)")
    predict.add_argument("--json", action="store_true",
                         help="JSON lines with every class probability")
    predict.add_argument("--threads", type=int, default=None, help="TFLite threads")
    predict.add_argument("--kernels", choices=KERNELS, default="default",
                         help="TFLite kernels: the runtime's default delegate (XNNPACK) or "
                              "its builtin kernels only (default: %(default)s)")
    predict.add_argument("--runtime", choices=("auto", "mediapipe"), default="auto",
                         help="auto: TensorFlow for a SavedModel, else the TFLite adapter "
                              "(ai-edge-litert first); mediapipe: MediaPipe Tasks' "
                              "TextClassifier with the TFLite file alone (its metadata), "
                              "as phones run it (default: %(default)s)")
    predict.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    _serve_parser(sub)
    show = sub.add_parser("config", help="print the resolved config as YAML",
                          description="Print the config that --config and --set resolve to. "
                                      "Every key is documented in pipeline/config.py.")
    _common_options(show)
    return parser


def _at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer >= minimum."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, found {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, found {value}")
        return value
    return parse


def _port(text: str) -> int:
    """argparse type: a TCP port number, 0 (any free port) to 65535."""
    value = _at_least(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, found {value}")
    return value


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve", help="serve an export over TF Serving's REST and gRPC APIs",
        description="Serve one exported model of EXPORT_DIR with TF Serving's REST API: "
                    "GET /v1/models/NAME (status), GET /v1/models/NAME/metadata, POST "
                    "/v1/models/NAME[/versions/V]:predict (`instances` or `inputs`) and "
                    ":classify, GET /healthz; and its gRPC API on --grpc-port "
                    "(PredictionService Predict, Classify, GetModelMetadata; ModelService "
                    "GetModelStatus). Concurrent requests are batched. Only "
                    "targets that passed the export gate are served, unless --force. "
                    "SIGINT/SIGTERM stop it after in-flight requests finish.")
    serve.add_argument("export_dir", type=Path, metavar="EXPORT_DIR",
                       help="the export folder of a run, e.g. runs/default/export")
    serve.add_argument("--backend", choices=EXPORT_TARGETS, default="savedmodel",
                       help="which exported target runs the requests: a SavedModel "
                            "(`savedmodel-ids` takes token ids only) or a TFLite target "
                            "(default: savedmodel)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=_port, default=8501,
                       help="port (default: 8501, TF Serving's REST port; 0: any free port)")
    serve.add_argument("--grpc-port", type=_port, default=8500, metavar="PORT",
                       help="gRPC port on the same --host (default: 8500, TF Serving's gRPC "
                            "port; 0: no gRPC)")
    serve.add_argument("--model-name", metavar="NAME",
                       help="model name in URLs (default: the export's export.name)")
    serve.add_argument("--max-batch", type=_at_least(1), default=32, metavar="N",
                       help="most instances the model runs at once; concurrent requests are "
                            "batched up to it (default: 32; 1: no batching)")
    serve.add_argument("--batch-wait-ms", type=float, default=0.0, metavar="MS",
                       help="how long a request waits for others to batch with "
                            "(default: 0: batch only what arrives while the model is busy)")
    serve.add_argument("--max-body-bytes", type=_at_least(1), default=1 << 20,
                       metavar="BYTES",
                       help="larger request bodies get 413, larger gRPC messages "
                            "RESOURCE_EXHAUSTED (default: 1048576)")
    serve.add_argument("--max-instances", type=_at_least(1), default=256, metavar="N",
                       help="most instances (texts) per request (default: 256)")
    serve.add_argument("--read-timeout", type=float, default=30.0, metavar="SECONDS",
                       help="a request body not all received this long after its headers "
                            "gets 408 and its connection closed (default: 30)")
    serve.add_argument("--threads", type=_at_least(1), default=None, metavar="N",
                       help="TFLite interpreter threads (default: the runtime's)")
    serve.add_argument("--force", action="store_true",
                       help="serve a target that failed the export gate")
    serve.add_argument("-v", "--verbose", action="store_true",
                       help="debug logging and an access log line per request")


def default_run_dir(config_path: Path | None) -> Path:
    return Path("runs") / (config_path.stem if config_path else "default")


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", force=True)
    # absl carries tfds's and TensorFlow's deprecation chatter; real failures raise.
    for noisy in ("absl", "tensorflow", "h5py", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; `predict` takes its texts before, between or after its
    options (argparse alone stops collecting TEXT at the first option)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "predict" and not any(a.startswith("-") for a in extra):
        args.texts = [*args.texts, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    try:
        if not args.verbose and args.command != "config":
            quiet_native_startup()
        if getattr(args, "run_dir", None) is not None and args.run_dir.exists() \
                and not args.run_dir.is_dir():
            raise SlimbertError(f"--run-dir {args.run_dir} is a file; give a folder (it is "
                                "created if missing)")
        if args.command == "predict":
            return predict_command(args)
        if args.command == "serve":
            return serve_command(args)
        config = load_config(args.config, args.overrides)
        if args.command == "config":
            print(config.to_yaml(), end="")
            return 0
        run_dir = args.run_dir or default_run_dir(args.config)
        names = pipeline_stages(config) if args.command == "run" else [args.command]
        timings = []
        for name in names:
            started = time.time()
            execute(name, config, run_dir, force=args.force)
            timings.append((name, time.time() - started))
        if args.command == "run":
            skipped = [s for s in available_stages() if s not in names]
            if skipped:
                log.info("switched off in the config: %s", ", ".join(skipped))
            missing = [s for s in STAGE_ORDER if s not in available_stages()]
            if missing:
                log.info("not in this version yet: %s", ", ".join(missing))
            for name, seconds in timings:
                print(f"{name:<10} {seconds:8.1f} s   {run_dir / name}")
            print(f"{'total':<10} {sum(s for _, s in timings):8.1f} s")
            report = run_dir / "report" / "report.md"
            if report.is_file():
                print(f"report: {report}")
        return 0
    except SlimbertError as err:
        print(f"slimbert: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("slimbert: interrupted", file=sys.stderr)
        return 130


def _read_lines(path: Path) -> list[str]:
    try:
        data = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    except OSError as err:
        raise SlimbertError(f"cannot read {path}: {err.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise SlimbertError(f"{path}:{line}: not UTF-8 (byte {data[err.start]:#04x}); "
                            "save the file as UTF-8") from None
    return [line for line in text.splitlines() if line.strip()]


def predict_command(args: argparse.Namespace) -> int:
    """`slimbert predict MODEL [TEXT ...] [--file F] [--json]`."""
    import json

    from export.predictor import Predictor, model_format

    for number, text in enumerate(args.texts, 1):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:  # argv bytes Python kept as lone surrogates
            byte = ord(text[err.start]) - 0xDC00
            shown = f"byte {byte:#04x}" if 0x80 <= byte <= 0xFF else repr(text[err.start])
            raise SlimbertError(f"TEXT argument {number} is not valid UTF-8 ({shown} at "
                                f"character {err.start}); pass UTF-8 text, or put the "
                                "texts in a UTF-8 file and use --file") from None
    texts = list(args.texts) + (_read_lines(args.file) if args.file else [])
    if not texts:
        raise SlimbertError("nothing to classify: give texts as arguments or --file FILE")
    if not args.model.exists():
        raise SlimbertError(f"{args.model} does not exist; exported models are under "
                            "<run-dir>/export/ (run `slimbert export`)")
    try:
        model_format(args.model)
    except ValueError as err:
        raise SlimbertError(str(err)) from None
    if args.runtime == "mediapipe":
        probabilities, labels = _predict_in_mediapipe(args.model, texts)
    else:
        predictor = Predictor(args.model, num_threads=args.threads, kernels=args.kernels)
        probabilities, labels = predictor.predict_texts(texts), predictor.labels
    for text, probs in zip(texts, probabilities):
        best = int(probs.argmax())
        if args.json:
            print(json.dumps({"text": text, "label": labels[best],
                              "probabilities": {name: round(float(p), 6) for name, p
                                                in zip(labels, probs)}},
                             ensure_ascii=False))
        else:
            print(f"{labels[best]}\t{probs[best]:.4f}\t{text}")
    return 0


def _predict_in_mediapipe(model: Path, texts: list[str]):
    """Probabilities and label names from MediaPipe's TextClassifier, which needs a TFLite
    file with model metadata (a SlimbertError naming the file if it has none)."""
    from export.mediapipe_tasks import MediaPipeUnavailable, classify_texts
    from export.tflite_metadata import read_metadata

    if model.is_dir() or model.suffix != ".tflite":
        raise SlimbertError(f"--runtime mediapipe runs a .tflite file, not {model}")
    try:
        metadata = read_metadata(model.read_bytes())
    except Exception as err:  # noqa: BLE001  (the flatbuffer reader's errors are many)
        raise SlimbertError(f"{model} is not a valid TFLite model ({err})") from None
    if metadata is None or not metadata["process_units"] or not metadata["files"]:
        missing = "model metadata" if metadata is None else "a tokenizer and its vocabulary"
        raise SlimbertError(
            f"{model} has no {missing} for MediaPipe's TextClassifier, which needs the "
            "metadata's BERT tokenizer, vocabulary and labels inside the file; give a "
            "token-id TFLite file exported with export.mediapipe=true (<name>-cpu, -gpu, "
            "-int8, -qat, -pruned-qat or -student-*.tflite)")
    try:
        probabilities, info = classify_texts(model, texts)
    except (MediaPipeUnavailable, RuntimeError) as err:
        raise SlimbertError(str(err)) from None
    return probabilities, info["labels"]


def serve_command(args: argparse.Namespace) -> int:
    """`slimbert serve EXPORT_DIR [--backend B] [--port P] ...`: until SIGINT/SIGTERM."""
    from serve.app import create_app, serve

    if args.batch_wait_ms < 0:
        raise SlimbertError(f"--batch-wait-ms must be >= 0, found {args.batch_wait_ms}")
    app = create_app(args.export_dir, backend=args.backend, name=args.model_name,
                     max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
                     max_body_bytes=args.max_body_bytes, max_instances=args.max_instances,
                     force=args.force, threads=args.threads,
                     read_timeout=args.read_timeout)
    serve(app, args.host, args.port, grpc_port=args.grpc_port, access_log=args.verbose)
    return 0


def stage_main(name: str) -> None:
    """Entry of `python -m pipeline.<name>`."""
    sys.exit(main([name, *sys.argv[1:]]))


if __name__ == "__main__":
    sys.exit(main())
