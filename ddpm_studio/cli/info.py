"""``ddpm-studio info``: describe a model from its model.json and its weights file's header only: no network
is built and no tensor is read."""

from __future__ import annotations

from ddpm_studio.cli.common import resolve_model_path
from ddpm_studio.core.model import store as model_store
from ddpm_studio.core.model.store import ModelInfo


def run(args) -> int:
    info = model_store.read_model_info(resolve_model_path(args.model))
    history = model_store.load_loss_history(info.path)
    unet = info.unet
    print(f"Model        {info.path}")
    padding = "like TensorFlow (the paper)" if unet.downsample_padding == "same" else "on every side"
    print(f"Architecture U-Net, {info.weights.parameter_count:,} parameters: "
          f"{unet.image_size}x{unet.image_size}x{unet.image_channels}, base {unet.base_channels}, "
          f"multipliers {list(unet.channel_multipliers)}, {unet.num_res_blocks} blocks/level, "
          f"attention at {list(unet.attention_resolutions)}, dropout {unet.dropout}, downsampling padded {padding}")
    print(f"Weights      {model_store.EMA_FILE}, {', '.join(info.weights.dtypes)}")
    print(f"Schedule     {info.schedule.kind}, T = {info.schedule.num_timesteps}")
    source = info.extra.get("source")
    if source:
        print(f"Imported     from the {source.get('format')} folder {source.get('path')} on {source.get('imported')}")
        print(f"             {source.get('weights')}, {source.get('bytes', 0):,} bytes, sha256 {source.get('sha256')}")
    if info.step or not source:
        preset = f" (preset {info.training.get('preset')})" if info.training else ""
        print(f"Trained      {info.step:,} steps{preset}")
    if info.training.get("init_from"):
        print(f"Fine-tuned   from {info.training['init_from']}")
    defaults = info.sampling_defaults
    print(f"Sampling     {defaults['variance'].replace('_', ' ')} variance by default, "
          f"x0_hat {'clipped to [-1, 1]' if defaults['clip'] else 'not clipped'}")
    if info.last_loss is not None:
        recent = f" (mean of last 100: {history[-100:].mean():.5f})" if len(history) else ""
        print(f"Last loss    {info.last_loss:.5f}{recent}")
    if info.dataset:
        print(f"Dataset      {describe_dataset(info.dataset)}")
    print(f"Variance     {'learned (L_hybrid)' if unet.learned_variance else 'fixed (L_simple)'}")
    print(f"Resumable    {'yes' if info.can_resume else 'no (sampling weights only)'}")
    for label, command in recorded_commands(info):
        print(f"{label:<12} {command}")
    for index, record in enumerate(model_store.evaluations(info)):
        print(f"{'Evaluations' if index == 0 else '':<12} {model_store.describe_evaluation(record)}")
    return 0


def describe_dataset(dataset: dict) -> str:
    """How many images, and from where: the folders, else what the dataset was recorded as; nothing made up."""
    count = dataset.get("count")
    text = f"{count} images" if count is not None else "images"
    paths = dataset.get("paths") or []
    if paths:
        return f"{text} from {', '.join(paths)}"
    if dataset.get("source"):
        return f"{text}: {dataset['source']}"
    return text


def recorded_commands(info: ModelInfo) -> list[tuple[str, str]]:
    """Every command that wrote the model, in order, each with its label: the one that made it, then the resumes."""
    commands = [("Made by", info.command)] if info.command else []
    later = info.extra.get("commands")
    if not isinstance(later, list):  # a foreign or damaged model.json: nothing more to show than the first
        later = []
    commands += [("Resumed by" if index == 0 else "", str(command)) for index, command in enumerate(later)]
    return commands
