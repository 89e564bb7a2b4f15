"""The method contract suite (peftbench.testing.MethodContract) over the built-in methods, exactly as a
third-party plugin author runs it on theirs. The adapter's runs are in test_adapter.py."""

from peftbench.testing import MethodContract


class TestLora(MethodContract):
    method_name = "lora"


class TestLoraDoraRslora(MethodContract):
    method_name = "lora"
    method_options = {"r": 4, "alpha": 8, "use_dora": True, "use_rslora": True, "target_modules": ["q_proj", "v_proj"]}


class TestQLora(MethodContract):
    method_name = "qlora"


class TestQLoraFp4(MethodContract):
    method_name = "qlora"
    method_options = {"quant_type": "fp4", "double_quant": False}


class TestFull(MethodContract):
    method_name = "full"


class TestQLoraBf16Compute(MethodContract):
    """The 4-bit layers compute in bf16 while the rest of the model is fp32 (the CUDA default): merging
    must leave a model whose layers accept the fp32 activations."""

    method_name = "qlora"
    method_options = {"compute_dtype": "bf16"}
