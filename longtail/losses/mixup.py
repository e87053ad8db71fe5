"""stub"""
def mixup_batch(*a, **k):
    raise NotImplementedError


def mixup_loss(*a, **k):
    raise NotImplementedError
