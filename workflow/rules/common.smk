from dafusion.config import uses_tokens


wildcard_constraints:
    dataset="[A-Za-z0-9_-]+",
    method="[A-Za-z0-9_-]+",
    seed=r"\d+",
    shots=r"\d+",


RESULTS = config["results"]


def res(path):
    """A path under the results root."""
    return f"{RESULTS}/{path}"


def split_path(wildcards):
    return res(
        f"{wildcards.dataset}/splits/seed{wildcards.seed}-shots{wildcards.shots}.parquet"
    )


def model_input(wildcards=None):
    """The built tiny model directory, or nothing for a hub id / local directory."""
    return res("model/tiny") if config["model"]["pretrained"] == "tiny" else []


def grid(pattern, methods=None):
    """Expand a result pattern over datasets, seeds, shots (and methods)."""
    return [
        res(pattern.format(dataset=d, method=m, seed=s, shots=k))
        for d in config["datasets"]
        for m in (methods or [None])
        for s in config["seeds"]
        for k in config["examples_per_class"]
    ]


def sdedit_methods():
    return [m for m, spec in config["methods"].items() if spec["kind"] == "sdedit"]


def all_tokens():
    needed = any(uses_tokens(spec) for spec in config["methods"].values())
    return (
        grid("{dataset}/tokens/seed{seed}-shots{shots}.safetensors") if needed else []
    )


def all_synthetic():
    return grid(
        "{dataset}/synthetic/{method}/seed{seed}-shots{shots}/index.parquet",
        sdedit_methods(),
    )


def all_runs():
    return grid(
        "{dataset}/runs/{method}/seed{seed}-shots{shots}.parquet",
        list(config["methods"]),
    )


def generate_tokens(wildcards):
    """The class tokens, for methods whose prompt uses them."""
    if uses_tokens(config["methods"][wildcards.method]):
        return res(
            f"{wildcards.dataset}/tokens/seed{wildcards.seed}-shots{wildcards.shots}.safetensors"
        )
    return []


def train_synthetic(wildcards):
    """The synthetic set a run mixes in; a baseline run uses none."""
    if config["methods"][wildcards.method]["kind"] == "baseline":
        return []
    return res(
        f"{wildcards.dataset}/synthetic/{wildcards.method}/"
        f"seed{wildcards.seed}-shots{wildcards.shots}/index.parquet"
    )


def index_spec(wildcards):
    """The dataset entry index_dataset reads; allow_fewer only matters to few_shot_split, so
    changing it does not reread the dataset."""
    spec = config["datasets"][wildcards.dataset]
    return {key: value for key, value in spec.items() if key != "allow_fewer"}


def index_mem_mb(wildcards):
    """COCO's annotation files and ImageNet's file lists need more memory than the rest."""
    kind = config["datasets"][wildcards.dataset]["kind"]
    return 16000 if kind in ("coco", "imagenet") else 4000


def per_seed_split(wildcards):
    """Whether the dataset is halved per seed (split_protocol: original-code)."""
    spec = config["datasets"][wildcards.dataset]
    return spec["split_protocol"] == "original-code"


def training_pool(wildcards):
    """The manifest few-shot subsets are drawn from: the pool, or this seed's half of it."""
    if per_seed_split(wildcards):
        return res(f"{wildcards.dataset}/splits/seed{wildcards.seed}-pool.parquet")
    return res(f"{wildcards.dataset}/splits/pool.parquet")


def eval_split(wildcards):
    """The evaluation manifest of a run: the dataset's, or this seed's other half."""
    if per_seed_split(wildcards):
        return res(f"{wildcards.dataset}/splits/seed{wildcards.seed}-val.parquet")
    return res(f"{wildcards.dataset}/splits/val.parquet")
