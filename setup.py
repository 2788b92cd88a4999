from setuptools import find_packages, setup

setup(
    name="editspecialists",
    version="0.1.0",
    description="Online RLAIF fine-tuning of InstructPix2Pix into image-editing specialists",
    packages=find_packages(include=["editspecialists", "editspecialists.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.6,<2.15",
        "torchvision>=0.21,<0.30",
        "diffusers>=0.35.2,<0.43",
        "transformers>=5.17,<6",
        "accelerate>=1.2,<2",
        "peft>=0.18,<0.22",
        "ml_collections>=1.0",  # 1.0: the config-flag parser and the misspelt-key hint that scripts rely on
        "absl-py>=2.0",
        "pillow>=10",
        "numpy>=1.26",
        "open_clip_torch>=2.26,<4",
        "wandb>=0.18",
        "safetensors>=0.8",
        "tqdm>=4.66",
        "dreamsim>=0.2.1",
        "huggingface_hub>=1.5",
        "filelock>=3.12",
    ],
    extras_require={
        # gradio: the app's tests (tests/test_app.py) run in CI; it brings gradio_client
        "test": ["pytest>=8", "pytest-timeout>=2.3", "gradio>=6.0,<7"],
        "8bit": ["bitsandbytes>=0.43"],
        "app": ["gradio>=6.0,<7"],  # scripts/app.py
    },
)
