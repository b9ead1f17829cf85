"""Smoothing before int8: move the activation outliers of the feed-forward output projections into
their weights, and keep padded positions out of the activation scales, so every weight MatMul of a
BERT-family encoder can run in int8.

The inputs of those projections (after GELU) have a few channels far wider than the rest, and dynamic
int8 scales a whole tensor at once: quantised as they are, e5 lost accuracy, so the first build kept
the 12 projections in fp32, a third of the MatMul work. Here each input channel j is divided by s_j
and the weight's row j multiplied by it (the product is unchanged), with
s_j = max|x_j|^a / max|w_j|^(1 - a) over calibration texts, as SmoothQuant does (Xiao et al., 2023,
https://arxiv.org/abs/2211.10438); and every encoder MatMul input is multiplied by the attention mask
(``zero_padding_rows``).

Measured on e5-small, a = 0.6, against the fp32 model, on the 20 sentences of
``tests/unit/models/sentences.py`` and the 280 reviews of ``tests/unit/trainer/reviews.py`` (neither
used for calibration), the first build's recipe -> this one (``python -m bench.int8``, except heads):
- worst cosine, each text alone: 0.9969 -> 0.9966; in length-sorted batches of 32 as the service runs
  them: 0.9961 -> 0.9925; the 20 sentences in one padded batch: 0.9970 -> 0.9953;
- ``python -m bench.heads`` text top-1 at 2/4/8/16/32 examples per tag: .598/.763/.862/.909/.945 ->
  .598/.760/.859/.908/.940 (one standard error is about .005);
- texts per CPU-second, one-thread calls, batch 32: 1.6x to 1.7x (110 -> 185 in one run); int8 file
  139 -> 118 MB.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx

ALPHA = 0.6  # 0.5, 0.75 and 0.85 gave worse worst-case cosines

# Calibration: everyday Persian and English of several lengths (reviews, news, chat), written for this
# purpose; none of it is in the tests' evaluation sets.
CALIBRATION_TEXTS = (
    "این گوشی رو یک ماهه خریدم و از دوربینش خیلی راضی هستم",
    "ارسال سفارش سه روز طول کشید ولی بسته‌بندی سالم بود",
    "کیفیت پارچه خوب نیست و بعد از اولین شستشو رنگش رفت",
    "قیمتش نسبت به بازار مناسبه، پیشنهاد می‌کنم",
    "باتری زود خالی میشه و شارژر هم داغ می‌کنه",
    "پشتیبانی فروشگاه جواب تلفن رو نمیده",
    "امروز هوای تهران آلوده بود و مدارس تعطیل شدند",
    "جلسه فردا ساعت ۱۰ صبح در دفتر مرکزی برگزار می‌شود",
    "کتابی که معرفی کردی رو خوندم، پایانش غافلگیرکننده بود",
    "سلام، ببخشید سفارش من کی می‌رسه؟ کد پیگیری ۴۵۲۱۸۷",
    "رستوران شلوغ بود ولی غذا گرم و خوشمزه سرو شد و کارکنان هم مودب بودند، حتما دوباره میام",
    "در این مقاله روش‌های جدید یادگیری ماشین برای تشخیص تصاویر پزشکی بررسی شده است و نتایج نشان می‌دهد"
    " که دقت مدل‌ها با داده‌های بیشتر به طور قابل توجهی افزایش پیدا می‌کند",
    "ok",
    "عالی",
    "I bought this blender last month and it still works like new.",
    "The package arrived two days late and the box was crushed.",
    "Battery life is disappointing, barely lasts half a day.",
    "Customer service replied within an hour and fixed the problem.",
    "Not worth the price, the material feels cheap.",
    "The city council approved the new budget on Tuesday after a long debate.",
    "Can you send me the slides from yesterday's meeting?",
    "The hotel room was clean, the staff were friendly, and breakfast had plenty of choice, although the wifi"
    " kept dropping in the evenings and the street outside was noisy until late at night.",
    "Researchers measured the effect of sleep on memory in a study of 2,400 adults over five years.",
    "great",
    "Size runs small, order one size up. Otherwise very comfortable shoes!",
    "رنگش با عکس فرق داشت ولی در کل بد نیست 3/5",
)


def ffn_down_projections(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """MatMul nodes of the feed-forward output projections (HF BERT-family naming)."""
    return [
        n
        for n in graph.node
        if n.op_type == "MatMul" and n.name.endswith("/output/dense/MatMul") and "/attention/" not in n.name
    ]


def smooth_ffn_inputs(fp32: Path, out: Path, tokenizer: Path, prefix: str, max_length: int, pad_id: int,
                      alpha: float = ALPHA) -> int:
    """Write ``fp32`` with its feed-forward output projections smoothed to ``out``; returns how many.

    The result computes the same function in fp32 (up to rounding); only its int8 quantisation differs.
    """
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper
    from tokenizers import Tokenizer

    model = onnx.load(str(fp32))
    graph = model.graph
    targets = ffn_down_projections(graph)
    weights = {i.name: i for i in graph.initializer}
    targets = [n for n in targets if n.input[1] in weights]
    if not targets:
        onnx.save(model, str(out))
        return 0
    # Widest value each input channel takes over the calibration texts, read by exposing the inputs.
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = [n.input[0] for n in targets]
    for name in names:
        probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep the names
    options.intra_op_num_threads = 1  # one summation order on every machine with the same kernels
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    del probe
    tok = Tokenizer.from_file(str(tokenizer))
    tok.enable_truncation(max_length=max_length)
    tok.enable_padding(pad_id=pad_id)
    inputs = {i.name for i in session.get_inputs()}
    widest = [np.zeros(0, dtype=np.float32) for _ in targets]
    # Each text alone, and all of them in one padded batch: padded positions pass through the
    # projections too, and their values weigh on a batch's dynamic int8 scale.
    texts = [prefix + t for t in CALIBRATION_TEXTS]
    for batch in [*([t] for t in texts), texts]:
        encs = tok.encode_batch(batch)
        feeds = {"input_ids": np.array([e.ids for e in encs], dtype=np.int64),
                 "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64)}
        if "token_type_ids" in inputs:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        outputs = session.run(names, {name: v for name, v in feeds.items() if name in inputs})
        for k, x in enumerate(outputs):
            m = np.abs(np.asarray(x)).reshape(-1, np.shape(x)[-1]).max(axis=0)
            widest[k] = m if widest[k].size == 0 else np.maximum(widest[k], m)
    del session
    for node, x_max in zip(targets, widest, strict=True):
        init = weights[node.input[1]]
        w = numpy_helper.to_array(init).astype(np.float32)
        s = smoothing_factors(x_max, np.abs(w).max(axis=1), alpha)
        init.CopyFrom(numpy_helper.from_array(w * s[:, None], init.name))
        inverse = numpy_helper.from_array((1.0 / s).astype(np.float32), f"{node.name}/smooth_inverse")
        graph.initializer.append(inverse)
        smoothed = f"{node.input[0]}/smoothed"
        mul = helper.make_node("Mul", [node.input[0], inverse.name], [smoothed],
                               name=f"{node.name}/smooth")
        graph.node.insert(list(graph.node).index(node), mul)
        node.input[0] = smoothed
    zero_padding_rows(graph)
    onnx.save(model, str(out))
    return len(targets)


def smoothing_factors(x_max: np.ndarray, w_max: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """Each channel's factor ``max|x_j|^a / max|w_j|^(1 - a)``, rounded to the nearest power of two.

    The calibration maxima come from ONNX Runtime's kernels, whose last bits may differ between CPUs (AVX2 and
    AVX-512 kernels sum in other orders): with the factors as computed, one machine built ``model.int8.onnx``
    4ef7487f0e33 from the fp32 file 04e4bb88efee where earlier machines had built bac81c5a8551, so another model id,
    and a build host change would have asked for every head to be refitted. A power of two moves only when a maximum
    moves across a rounding boundary: for e5-small's 18,432 channels the nearest needs a relative change of 1.9e-5
    (a quarter-power grid: 6.8e-6), against float32 rounding of about 1e-7. Scaling by a power of two is exact in
    float. The price, ``python -m bench.int8``: worst cosine to fp32 0.9955 (each text alone, in batches of 32, 20
    in one padded batch) against 0.9966 with the factors as computed (quarter powers: 0.9961).
    """
    x, w = (np.maximum(m, 1e-5).astype(np.float64) for m in (x_max, w_max))
    raw = x**alpha / w ** (1 - alpha)
    exponents = np.rint(np.log2(np.clip(raw, 1e-2, 1e4)))
    factors: np.ndarray = np.exp2(exponents).astype(np.float32)
    return factors


def zero_padding_rows(graph: onnx.GraphProto) -> int:
    """Multiply the input of every encoder weight MatMul by the attention mask; returns how many inputs.

    Padded positions never reach a real token's output (attention masks them as keys, pooling skips
    them), but their values still enter each batch's dynamic int8 scale; zeroed, a padded batch
    quantises like its longest text alone.
    """
    from onnx import TensorProto, helper, numpy_helper

    weights = {i.name for i in graph.initializer}
    if "attention_mask" not in {i.name for i in graph.input}:
        return 0
    nodes = [n for n in graph.node
             if n.op_type == "MatMul" and "/encoder/" in n.name and n.input[1] in weights]
    if not nodes:
        return 0
    axes = numpy_helper.from_array(np.array([-1], dtype=np.int64), "padding_mask/axes")
    graph.initializer.append(axes)
    prologue = [
        helper.make_node("Cast", ["attention_mask"], ["padding_mask/float"], to=TensorProto.FLOAT,
                         name="padding_mask/Cast"),
        helper.make_node("Unsqueeze", ["padding_mask/float", axes.name], ["padding_mask"],
                         name="padding_mask/Unsqueeze"),
    ]
    masked: dict[str, str] = {}  # input -> its masked copy (query, key and value share one)
    for node in nodes:
        source = node.input[0]
        if source not in masked:
            masked[source] = f"{source}/masked"
            mul = helper.make_node("Mul", [source, "padding_mask"], [masked[source]], name=f"{source}/mask")
            graph.node.insert(list(graph.node).index(node), mul)
        node.input[0] = masked[source]
    for k, node in enumerate(prologue):
        graph.node.insert(k, node)
    return len(masked)
