"""The one exception type for bad input data.

Messages are one line and name the file (or folder) and what is wrong with it,
e.g. `DataError: /data/BraTS/case_001/case_001_flair.nii.gz: contains 12 NaN voxels`.
"""


class DataError(ValueError):
    """Bad or inconsistent input data; str(e) names the file and the problem."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
