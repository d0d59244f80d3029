"""Train any mmzoo model: `python train.py model=vit data=digits` (see configs/)."""
import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    from mmzoo.training import train

    train(cfg)


if __name__ == "__main__":
    main()
