"""``kslim search``: simulated-annealing architecture search on Fashion-MNIST."""


def cmd_search(args):
    import numpy as np

    from kslim._io import atomic_save_model
    from kslim.datasets import fashion_mnist, fashion_mnist_small, preprocess
    from kslim.errors import KslimValueError
    from kslim.nas import get_space, search

    if args.trials < 1:
        raise KslimValueError(f"--trials must be >= 1, got {args.trials}.")
    from kslim.validation import check_output_dir

    check_output_dir(args.out, "--out")
    if args.max_flops is None and args.max_latency is None:
        print("kslim search: note: no --max-flops/--max-latency given: the search is unconstrained.")
    (x, y), (xt, yt) = fashion_mnist_small() if args.data == "small" else fashion_mnist()
    n, nv = args.train_limit or len(x), args.val_limit or len(xt)
    train = (preprocess(x[:n]), y[:n].astype(np.int32))
    val = (preprocess(xt[:nv]), yt[:nv].astype(np.int32))
    latency_fn = None
    if args.latency_table:
        if args.max_latency is None:
            raise KslimValueError("--latency-table needs --max-latency <ms>.")
        from kslim.lite import LatencyPredictor

        latency_fn = LatencyPredictor(args.latency_table).predict
    space = get_space(args.space, input_shape=train[0].shape[1:], num_classes=10, learning_rate=args.lr)
    result = search(
        space, train, val, max_flops=args.max_flops, max_latency=args.max_latency, latency_fn=latency_fn,
        max_trials=args.trials, epochs_per_trial=args.epochs, init_temperature=args.temperature,
        reduce_rate=args.reduce_rate, seed=args.seed, directory=args.out, project_name=args.space,
        overwrite=not args.resume, batch_size=args.batch_size, verbose=0,
    )
    cost = "flops" if args.max_flops is not None else ("latency_ms" if args.max_latency is not None else None)
    print(f"{'trial':>5}  {'status':<9} {'val_accuracy':>12}  {cost or '':>10}  {'T':>8}  accepted")
    for t in result.history:
        score = f"{t['score']:.4f}" if t.get("score") is not None else "-"
        c = f"{t[cost]:.4g}" if cost and t.get(cost) is not None else ""
        temp = f"{t['temperature']:.3g}" if t.get("temperature") is not None else ""
        print(f"{t['trial_id']:>5}  {t['status']:<9} {score:>12}  {c:>10}  {temp:>8}  {t.get('accepted', '')}")
    print(f"rejected before training: {len(result.rejected)}")
    best_path = atomic_save_model(result.model, result.directory / "best.keras")
    print(f"best val_accuracy {result.score:.4f} with {result.values}")
    print(f"best model: {best_path}\nhistory:    {result.history_path}\nfigure:     {result.plot_path}\n"
          f"tensorboard --logdir {result.directory / 'tensorboard'}")
    return 0


def register(sub):
    p = sub.add_parser(
        "search",
        help="simulated-annealing architecture search under FLOPs/latency limits",
        description="Search a MobileNetV2-style or ResNet-style space on Fashion-MNIST with simulated "
                    "annealing (keras-tuner oracle); candidates over --max-flops/--max-latency are rejected "
                    "before training. Writes the trials, sa_history.json, search.png, TensorBoard logs and "
                    "best.keras under OUT/SPACE.",
    )
    p.add_argument("--space", default="mobilenetv2", choices=["mobilenetv2", "resnet"], help="search space")
    p.add_argument("--max-flops", type=float, default=None, help="FLOPs limit (2 x MACs), e.g. 5e6 (default: none)")
    p.add_argument("--max-latency", type=float, default=None,
                   help="latency limit in ms (TFLite float32 on this CPU, 1 thread; default: none)")
    p.add_argument("--latency-table", default=None,
                   help="latency table JSON (kslim latency-table) to predict latency instead of measuring it "
                        "(default: measure)")
    p.add_argument("--trials", type=int, default=10, help="trials (trained candidates)")
    p.add_argument("--epochs", type=int, default=1, help="epochs per trial")
    p.add_argument("--batch-size", type=int, default=32, help="training batch size of each candidate")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate of each candidate")
    p.add_argument("--temperature", type=float, default=0.05, help="initial SA temperature (accuracy units)")
    p.add_argument("--reduce-rate", type=float, default=0.85, help="SA cooling factor per trial")
    p.add_argument("--data", default="small", choices=["small", "full"], help="Fashion-MNIST subset or full set")
    p.add_argument("--train-limit", type=int, default=2000, help="training images used (0: all)")
    p.add_argument("--val-limit", type=int, default=1000, help="validation images (from the test split; 0: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the search and of the candidates' training")
    p.add_argument("--resume", action="store_true", help="resume the search in OUT instead of starting afresh")
    p.add_argument("--out", default="kslim_runs/search", help="output directory")
    p.set_defaults(func=cmd_search)
