"""Hub-ready output: the model card (rendered with `huggingface_hub.ModelCard` from a template in
`training/model_cards/`) and the training-curve PNG, shared by both training scripts.
"""

import json
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

# Inside the `training` package and declared as its package data (setup.cfg), so that the templates are installed
# with it: a non-editable install has no repository around the package to find them in.
MODEL_CARDS_DIR = Path(__file__).resolve().parent / "model_cards"


def plot_training_curves(log_history: list[dict], path: str | Path, title: str = "training") -> Path | None:
    """Train loss (and eval loss, when logged) against the step, from `trainer.state.log_history`, as a PNG.

    Returns the path, or None when nothing was logged.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in log_history if "loss" in r and "step" in r]
    evals = [(r["step"], r["eval_loss"]) for r in log_history if "eval_loss" in r and "step" in r]
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for points, label in ((train, "train loss"), (evals, "eval loss")):
        if points:
            ax.plot(*zip(*points), marker="." if len(points) < 30 else None, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def write_model_card(
    output_dir: str | Path,
    template: str,
    *,
    model_name: str,
    task_type: str,
    task_name: str,
    dataset_type: str,
    dataset_name: str,
    metric_type: str,
    metric_name: str,
    metric_value: float,
    language: list[str] | str,
    pipeline_tag: str,
    datasets: list[str] | None = None,
    license: str = "apache-2.0",
    tags: list[str] | None = None,
    **template_kwargs,
) -> Path:
    """Render `training/model_cards/<template>` into `output_dir/README.md` with YAML metadata and a `model-index` entry.

    `template_kwargs` fill the template's own `{{ variables }}` (recipe, figures, sample output, ...).
    """
    card_data = ModelCardData(
        language=language,
        license=license,
        library_name="transformers",
        tags=["hf_vanilla_transformer", *(tags or [])],
        datasets=datasets,
        pipeline_tag=pipeline_tag,
        model_name=model_name,
        eval_results=[
            EvalResult(
                task_type=task_type,
                task_name=task_name,
                dataset_type=dataset_type,
                dataset_name=dataset_name,
                metric_type=metric_type,
                metric_name=metric_name,
                metric_value=float(metric_value),
            )
        ],
    )
    card = ModelCard.from_template(
        card_data, template_path=str(MODEL_CARDS_DIR / template), model_name=model_name, **template_kwargs
    )
    path = Path(output_dir) / "README.md"
    card.save(path)
    return path


def recipe_as_yaml(*argument_objects) -> str:
    """The run's effective settings (all argument dataclasses), for the card; non-default-serialisable values as str."""
    import dataclasses

    import yaml

    merged = {}
    for obj in argument_objects:
        values = obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj)
        merged.update({k: v for k, v in values.items() if v is not None})
    return yaml.safe_dump(json.loads(json.dumps(merged, default=str)), sort_keys=False)
