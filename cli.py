"""Command line of l2bn-lit: ``python cli.py {fit,validate,test,predict} --config configs/<x>.yaml``."""

from l2bn_lit.errors import run_main
from l2bn_lit.lit.cli import main

if __name__ == "__main__":
    run_main(lambda argv: main())  # LightningCLI reads sys.argv, which run_main has tidied
