"""Every conversation with the outside world, one subpackage per counterpart."""
