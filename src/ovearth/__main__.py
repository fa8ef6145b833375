"""``python -m ovearth`` (also what ``torchrun -m ovearth`` runs)."""

from .cli import main

if __name__ == "__main__":
    main()
