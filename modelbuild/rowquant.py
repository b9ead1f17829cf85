"""Per-row activation scales for a dynamically quantised model, so a text's vector ignores its batch-mates.

ONNX Runtime's ``quantize_dynamic`` quantises each weight MatMul's input with ``DynamicQuantizeLinear``,
which takes ONE scale and zero point over the whole tensor: over every text of the batch. A text then
embeds differently alone and next to a text with wider activations (measured on a trained head: up to
0.21 in probability), so an answer depended on whoever else's request the batcher merged with it.

``per_row_activation_scales`` rewrites each ``DynamicQuantizeLinear`` -> ``MatMulInteger`` into the
same arithmetic with a scale and zero point per batch row (per text): the row's min and max (widened to
hold 0, as ``DynamicQuantizeLinear`` does), ``QuantizeLinear`` along axis 0, ``MatMulInteger`` without an
activation zero point, and the zero point's share taken back out as ``zp_row * column sums of the int8
weight``. Every integer product of a row only sees that row's scale: a text alone and in any batch gives
the same integers; only fp32 rounding in the attention and the padding mask differs. Padded positions
are zero (``smoothing.zero_padding_rows``), and 0 is always inside the range, so padding does not move
a row's scale either. Figures: ``python -m bench.batch_invariance``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx


def per_row_activation_scales(model: onnx.ModelProto) -> int:
    """Rewrite ``model`` in place; returns how many ``DynamicQuantizeLinear`` nodes now scale per row.

    Raises ``ValueError`` on a pattern it does not know (a weight with a non-zero zero point, an input
    of unknown rank, a quantised output used elsewhere than a ``MatMulInteger`` and its scale product).
    """
    from onnx import TensorProto, helper, numpy_helper, shape_inference

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    inferred = shape_inference.infer_shapes(model)
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in
             [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
             if v.type.tensor_type.HasField("shape")}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)

    def const(name: str, value: np.ndarray) -> str:
        graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    zero = const("rowquant/zero", np.array(0.0, dtype=np.float32))
    levels = const("rowquant/255", np.array(255.0, dtype=np.float32))
    tiny = const("rowquant/tiny", np.array(1e-12, dtype=np.float32))
    flat = const("rowquant/flat", np.array([0, -1], dtype=np.int64))
    axis1 = const("rowquant/axis1", np.array([1], dtype=np.int64))
    rewritten = 0
    for dql in [n for n in graph.node if n.op_type == "DynamicQuantizeLinear"]:
        x, (q, s, zp) = str(dql.input[0]), (str(o) for o in dql.output)
        rank = ranks.get(x)
        if rank is None or rank < 2:
            raise ValueError(f"{dql.name}: input rank unknown")
        matmuls = consumers[q]
        if any(m.op_type != "MatMulInteger" or m.input[0] != q or m.input[2] != zp for m in matmuls):
            raise ValueError(f"{dql.name}: quantised output feeds something other than MatMulInteger")
        if any(c.op_type != "MatMulInteger" for c in consumers[zp]):
            raise ValueError(f"{dql.name}: zero point used outside MatMulInteger")
        p = f"{dql.name}/rowquant"
        bcast = const(f"{p}/bcast", np.array([-1] + [1] * (rank - 1), dtype=np.int64))
        nodes = [
            helper.make_node("Reshape", [x, flat], [f"{p}/flat"], name=f"{p}/Reshape"),
            helper.make_node("ReduceMax", [f"{p}/flat", axis1], [f"{p}/max"], keepdims=0, name=f"{p}/ReduceMax"),
            helper.make_node("ReduceMin", [f"{p}/flat", axis1], [f"{p}/min"], keepdims=0, name=f"{p}/ReduceMin"),
            helper.make_node("Max", [f"{p}/max", zero], [f"{p}/hi"], name=f"{p}/Max"),
            helper.make_node("Min", [f"{p}/min", zero], [f"{p}/lo"], name=f"{p}/Min"),
            helper.make_node("Sub", [f"{p}/hi", f"{p}/lo"], [f"{p}/range"], name=f"{p}/Sub"),
            helper.make_node("Div", [f"{p}/range", levels], [f"{p}/scale0"], name=f"{p}/Div"),
            helper.make_node("Max", [f"{p}/scale0", tiny], [f"{p}/scale"], name=f"{p}/Floor"),
            helper.make_node("Div", [f"{p}/lo", f"{p}/scale"], [f"{p}/lo_steps"], name=f"{p}/LoSteps"),
            helper.make_node("Neg", [f"{p}/lo_steps"], [f"{p}/neg_lo_steps"], name=f"{p}/Neg"),
            helper.make_node("Round", [f"{p}/neg_lo_steps"], [f"{p}/zp_round"], name=f"{p}/Round"),
            helper.make_node("Clip", [f"{p}/zp_round", zero, levels], [f"{p}/zp_float"], name=f"{p}/Clip"),
            helper.make_node("Cast", [f"{p}/zp_float"], [f"{p}/zp_u8"], to=TensorProto.UINT8, name=f"{p}/Cast"),
            helper.make_node("QuantizeLinear", [x, f"{p}/scale", f"{p}/zp_u8"], [q], axis=0,
                             name=f"{p}/QuantizeLinear"),
            helper.make_node("Reshape", [f"{p}/scale", bcast], [s], name=f"{p}/ScaleRows"),
            helper.make_node("Reshape", [f"{p}/zp_float", bcast], [f"{p}/zp_rows"], name=f"{p}/ZpRows"),
        ]
        for mm in matmuls:
            weight, w_zp = inits.get(mm.input[1]), inits.get(mm.input[3]) if len(mm.input) > 3 else None
            if weight is None or (w_zp is not None and np.any(numpy_helper.to_array(w_zp) != 0)):
                raise ValueError(f"{mm.name}: needs a constant weight with zero point 0")
            colsum = numpy_helper.to_array(weight).astype(np.float32).sum(axis=0)
            sums = const(f"{mm.name}/rowquant/colsum", colsum)
            out = mm.output[0]
            casts = consumers[out]
            if len(casts) != 1 or casts[0].op_type != "Cast":
                raise ValueError(f"{mm.name}: output is not cast to float once")
            cast = casts[0]
            raw = cast.output[0]
            corrected = f"{raw}/rowquant"
            for user in consumers[raw]:
                user.input[:] = [corrected if i == raw else i for i in user.input]
            mm.input[2] = ""
            after = [
                helper.make_node("Mul", [f"{p}/zp_rows", sums], [f"{mm.name}/rowquant/zp_share"],
                                 name=f"{mm.name}/rowquant/ZpShare"),
                helper.make_node("Sub", [raw, f"{mm.name}/rowquant/zp_share"], [corrected],
                                 name=f"{mm.name}/rowquant/Sub"),
            ]
            at = list(graph.node).index(cast) + 1
            for k, node in enumerate(after):
                graph.node.insert(at + k, node)
        at = list(graph.node).index(dql)
        graph.node.remove(dql)
        for k, node in enumerate(nodes):
            graph.node.insert(at + k, node)
        rewritten += 1
    return rewritten
