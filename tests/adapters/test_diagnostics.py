"""Describing checkpoints for error messages: key groups at the depth where they branch."""

from mile_ssl.adapters.diagnostics import group_keys


def test_group_keys_stops_where_modules_branch() -> None:
    moco = [
        "module.encoder_q.conv1.weight",
        "module.encoder_q.layer1.0.conv1.weight",
        "module.encoder_q.fc.0.weight",
        "module.encoder_k.conv1.weight",
        "module.encoder_k.layer1.0.conv1.weight",
        "module.queue",
        "module.queue_ptr",
    ]
    assert group_keys(moco) == {
        "module.encoder_q.": 3,
        "module.encoder_k.": 2,
        "module.queue": 1,
        "module.queue_ptr": 1,
    }
    dropped = ["module.encoder_q.fc.0.weight", "module.encoder_q.fc.2.bias", "module.queue"]
    assert group_keys(dropped) == {"module.encoder_q.fc.": 2, "module.queue": 1}
    dino = ["teacher.module.head.mlp.0.weight", "teacher.module.head.last_layer.weight_g"]
    dino += ["student.module.backbone.conv1.weight", "student.module.head.mlp.0.weight"]
    assert group_keys(dino) == {"teacher.module.head.": 2, "student.module.": 2}
    assert group_keys(["fc.weight", "fc.bias"]) == {"fc.": 2}
    assert group_keys([]) == {}
