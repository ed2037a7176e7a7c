"""File names of a map directory and the verification modes (see :mod:`.map_format`)."""

MANIFEST_FILE = 'manifest.json'
INDEX_FILE = 'index.faiss'
DESCRIPTORS_FILE = 'descriptors.npy'
RECORDS_FILE = 'records.npz'
MODEL_DIR = 'model'
MODEL_FILES = (f'{MODEL_DIR}/model.onnx', f'{MODEL_DIR}/model_card.json')
VERIFY_MODES = ('auto', 'full', 'size')
