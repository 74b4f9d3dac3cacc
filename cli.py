"""Command line of l2bn-lit: ``python cli.py {fit,validate,test,predict} --config configs/<x>.yaml``."""

from l2bn_lit.cli import main

if __name__ == "__main__":
    main()
