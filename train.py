"""Train any mmzoo model: `python train.py model=vit data=digits` (see configs/)."""
import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from mmzoo.training import optimized_value, train

    # a sweeper (configs/hparams_search/) optimises the value returned here
    return optimized_value(train(cfg), cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
