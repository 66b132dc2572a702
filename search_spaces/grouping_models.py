"""The survey's tree-based encoders (Sec. 2.4, Tables 4-5): Branched-1/2/3 and FAFS-1/2/3 rows.

Each row is a ``branched`` encoder whose tree a grouping search derives from the study's cached
single-task networks before the row trains. Branched-1/2/3 are three #P budgets, FAFS-1/2/3 three
values of lambda. The survey gives neither its budgets nor its lambdas: the budgets put the rows
at Table 4's printed sizes (107 / 114 / 116 M between the MTL baseline's 92 M and the single-task
networks' 138 M: fractions 0.33 / 0.48 / 0.52). Lambda weighs the separation cost against the
branch cost L0 = 1/64: with the task affinities of the synthetic Table 4 twin (0.4-0.7 between
tasks), 0.03 / 0.06 / 0.25 keep one, two and three branches at the top junction; the FAFS
release's default of 1.0 splits every such task apart.
"""

BUDGETS = (0.33, 0.48, 0.52)
LAMBDAS = (0.03, 0.06, 0.25)


def grouping_experiments(first_location: int, **search_params) -> list:
    """Branched-1/2/3 and FAFS-1/2/3, branching allowed from stage ``first_location`` on."""
    common = {"architecture": "branched", "balancer": "fixed"}
    return ([{"name": f"branched_{i}", **common, "grouping": {"name": "branched_mtl", "params": {
                "budget": b, "first_location": first_location, **search_params}}}
             for i, b in enumerate(BUDGETS, 1)]
            + [{"name": f"fafs_{i}", **common, "grouping": {"name": "fafs", "params": {
                "lam": lam, "first_location": first_location, **search_params}}}
               for i, lam in enumerate(LAMBDAS, 1)])
