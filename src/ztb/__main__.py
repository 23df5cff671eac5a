from ztb.cli import main

if __name__ == "__main__":  # a process spawned by the verifier imports this module too
    main()
