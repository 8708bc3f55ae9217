"""Train FedBiOT: ``python train.py`` (embedded default) or ``python train.py fit --config <yaml>``."""

from fedbiot_pl.cli import main

if __name__ == "__main__":
    main()
