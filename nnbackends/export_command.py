"""``nnbackends export``: a saved model as an ONNX file and/or a PyTorch state dict."""
from __future__ import annotations

import json

from .export import DEFAULT_OPSET, save_torch_state_dict, to_onnx
from .model import load_model


def add_parser(sub):
    """Add ``export`` to the subcommands of ``nnbackends``."""
    p = sub.add_parser(
        "export", help="write a saved model as ONNX and/or as a PyTorch state dict",
        description="Write a model saved by 'nnbackends train --save' for other tools: an ONNX graph "
                    "(ONNX Runtime and others) and/or a safetensors file of weights that "
                    "torch.nn.Sequential(...).load_state_dict(safetensors.torch.load_file(OUT)) takes.")
    p.add_argument("model", metavar="MODEL", help="a model saved by 'nnbackends train --save'")
    p.add_argument("--onnx", metavar="OUT.onnx", help="write an ONNX file, needs the onnx extra (default: none)")
    p.add_argument("--opset", type=int, default=None,
                   help=f"ONNX opset to write (default: {DEFAULT_OPSET})")
    p.add_argument("--torch", metavar="OUT.safetensors",
                   help="write the weights as a PyTorch state dict: '{i}.weight' (out, in) and "
                        "'{i}.bias', i the layer's index (default: none)")
    p.add_argument("--json", action="store_true", help="print what was written as one JSON object (default: off)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors (default: off)")
    p.set_defaults(run=cmd_export)
    return p


def cmd_export(args) -> int:
    if args.opset is not None and not args.onnx:
        raise ValueError("--opset goes with --onnx OUT.onnx.")
    if not (args.onnx or args.torch):
        raise ValueError("give --onnx OUT.onnx, --torch OUT.safetensors or both.")
    model = load_model(args.model, backend="numpy")  # export needs the weights on the host only
    lines, opset = [], None
    if args.onnx:
        proto = to_onnx(model, args.onnx, opset=args.opset)
        opset = proto.opset_import[0].version
        lines.append(f"wrote {args.onnx} (ONNX opset {opset})")
    if args.torch:
        save_torch_state_dict(model, args.torch)
        lines.append(f"wrote {args.torch} (PyTorch state dict)")
    if args.json:
        print(json.dumps({"model": args.model, "onnx": args.onnx, "opset": opset, "torch": args.torch}))
    elif not args.quiet:
        print("\n".join(lines))
    return 0
