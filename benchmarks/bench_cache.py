"""(a) Full T x T evaluation of a 5-task synthetic stream with the feature cache vs without.

Goals: >= 3x less wall time with the cache; backbone forward passes <= 1.1 x test images.
Both variants run the same `run()` (PatchCore, naive, all five metrics); runs alternate
(without, with, without, with) and the faster of each pair is kept. Three times are
reported: `predict` (backbone + scoring of the 25 cells), `eval` (predict plus the metrics
of every cell: the full T x T evaluation) and `run` (everything, including fitting the five
tasks and drawing the plots, which the cache cannot shorten).
"""

from __future__ import annotations

import time

from common import emit, setup_logging, work_dir


def _one(scenario, enabled: bool, out) -> dict:
    import cl_iad.runner as runner_module
    from cl_iad.cache import FeatureCache
    from cl_iad.runner import run
    from cl_iad.strategies import Strategy, build_model

    cache = FeatureCache(enabled=enabled)
    strategy = Strategy(build_model("patchcore"), "naive", cache=cache)
    spent = {"predict": 0.0, "metrics": 0.0, "test_forwards": 0}
    evaluate = runner_module.evaluate

    def timed_evaluate(*args, **kwargs):
        start = time.perf_counter()
        try:
            return evaluate(*args, **kwargs)
        finally:
            spent["metrics"] += time.perf_counter() - start

    predict = strategy.predict

    def timed_predict(data, task_id=None):
        start, before = time.perf_counter(), cache.forward_images
        try:
            return predict(data, task_id)
        finally:
            spent["predict"] += time.perf_counter() - start
            spent["test_forwards"] += cache.forward_images - before

    strategy.predict = timed_predict
    runner_module.evaluate = timed_evaluate
    start = time.perf_counter()
    try:
        run(strategy, scenario, out, name=f"cache-{enabled}", wandb="off", progress=False, overwrite=True,
            checkpoint=False)
    finally:
        runner_module.evaluate = evaluate
    spent["eval"] = spent["predict"] + spent["metrics"]
    return {"run": time.perf_counter() - start, **spent, "forwards": cache.forward_images}


def main(argv: list[str] | None = None) -> dict:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image-size", type=int, default=128, help="synthetic image size (the demo's is 128)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per variant; the best is kept")
    args = parser.parse_args(argv)
    setup_logging()
    from cl_iad.scenarios import synthetic

    out = work_dir("cache")
    scenario = synthetic(out / "data", n_tasks=5, image_size=args.image_size)
    n_test = sum(len(t.test) for t in scenario)
    best: dict[bool, dict] = {}
    for enabled in (False, True) * args.repeats:
        r = _one(scenario, enabled, out)
        if enabled not in best or r["eval"] < best[enabled]["eval"]:
            best[enabled] = r
    on, off = best[True], best[False]
    return emit(f"cache_txt_eval_{args.image_size}px", {
        "tasks": len(scenario), "image_size": args.image_size, "test_images": n_test,
        "run_s_without": round(off["run"], 2), "run_s_with": round(on["run"], 2),
        "run_speedup": round(off["run"] / on["run"], 2),
        "eval_s_without": round(off["eval"], 2), "eval_s_with": round(on["eval"], 2),
        "eval_speedup": round(off["eval"] / on["eval"], 2),
        "predict_s_without": round(off["predict"], 2), "predict_s_with": round(on["predict"], 2),
        "predict_speedup": round(off["predict"] / on["predict"], 2),
        "test_forwards_with": on["test_forwards"], "test_forwards_without": off["test_forwards"],
        "test_forwards_per_test_image": round(on["test_forwards"] / n_test, 3),
        "goal": "eval_speedup >= 3; test_forwards_per_test_image <= 1.1",
    })


if __name__ == "__main__":
    main()
