"""Command line of l2bn-lit: ``python cli.py {fit,validate,test,predict} --config configs/<x>.yaml``."""

from l2bn_lit.cli import main
from l2bn_lit.errors import run_command

if __name__ == "__main__":
    run_command(lambda argv: main())  # LightningCLI reads sys.argv, which run_command has tidied
