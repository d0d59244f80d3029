"""Evaluate a run's checkpoint without training: `python eval.py ckpt_path=RUN/checkpoints/last.ckpt`."""
import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    from mmzoo.evaluation import evaluate

    evaluate(cfg)


if __name__ == "__main__":
    main()
