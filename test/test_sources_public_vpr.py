"""Public place-recognition layouts: each adapter on a tiny fixture in that exact layout.

Every fixture is written here in the dataset's own on-disk layout (NetVLAD dbStruct
.mat files via scipy.io.savemat, MSLS CSVs with pandas' index column, VPR-Bench's
pickled ground_truth_new.npy) with 8x8 images of distinct solid colours, so that
``load_image(row)`` proves which file a row points at.
"""

import csv
import itertools

import cv2
import numpy as np
import pytest
from scipy.io import savemat

from vl_attention.training.sources import DatasetLayoutError, load_dataset
from vl_attention.training.sources.public_vpr import time_of_day

JPEG_TOLERANCE = 6


class Palette:
    """Hand out distinct RGB colours (pairwise >= 39 levels apart in some channel)."""

    def __init__(self):
        self._counter = itertools.count()

    def __call__(self):
        i = next(self._counter)
        return ((i * 53) % 256, (i * 101 + 60) % 256, (i * 197 + 120) % 256)


def write_image(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((8, 8, 3), rgb[::-1], np.uint8))
    return rgb


def assert_image(dataset, row, rgb):
    image = dataset.load_image(row)
    assert image.shape == (8, 8, 3)
    assert np.abs(image.astype(int) - np.asarray(rgb)).max() <= JPEG_TOLERANCE, (
        f'row {row} ({dataset.image_paths[row]}) has colour {image[0, 0]}, expected {rgb}')


def cell(names):
    """Return an N x 1 MATLAB cell array of strings, as NetVLAD's dbImageFns / qImageFns."""
    array = np.empty((len(names), 1), dtype=object)
    for index, name in enumerate(names):
        array[index, 0] = name
    return array


def write_dbstruct(path, which_set, database, utm_database, queries, utm_queries,
                   database_stamps=None, query_stamps=None):
    """Write a NetVLAD dataset specification in the released field order."""
    struct = {'whichSet': which_set, 'dbImageFns': cell(database),
              'utmDb': np.asarray(utm_database, float).T}
    if database_stamps is not None:
        struct['dbTimeStamp'] = np.asarray(database_stamps, float)[None]
    struct.update({'qImageFns': cell(queries), 'utmQ': np.asarray(utm_queries, float).T})
    if query_stamps is not None:
        struct['qTimeStamp'] = np.asarray(query_stamps, float)[None]
    struct.update({'numImages': float(len(database)), 'numQueries': float(len(queries)),
                   'posDistThr': 25.0, 'posDistSqThr': 625.0, 'nonTrivPosDistSqThr': 100.0})
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), {'dbStruct': struct})


def write_csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'w', newline='') as handle:
        writer = csv.writer(handle)
        writer.writerow([''] + header)   # pandas' unnamed index column
        writer.writerows([index] + list(row) for index, row in enumerate(rows))


# --- pittsburgh ---------------------------------------------------------------------------

def write_pittsburgh(root, palette, variant, splits, database_count=2):
    """Database under root/<folder>/, queries under root/queries_real/ (same names)."""
    colours, utm = {}, {}
    for split_index, split in enumerate(splits):
        folder = f'{split_index:03d}'
        database = [f'{folder}/{folder}{k:03d}_pitch1_yaw{k + 1}.jpg'
                    for k in range(database_count)]
        queries = [f'{folder}/{folder}000_pitch1_yaw1.jpg']
        utm[split] = (np.array([[584000.5 + 30 * k + split_index * 1000, 4477000.25 + k]
                                for k in range(database_count)]),
                      np.array([[584003.0 + split_index * 1000, 4477010.0]]))
        colours[split] = ([write_image(root / name, palette()) for name in database],
                          [write_image(root / 'queries_real' / name, palette())
                           for name in queries])
        write_dbstruct(root / 'datasets' / f'pitts{variant}_{split}.mat', split, database,
                       utm[split][0], queries, utm[split][1])
    return colours, utm


def test_pittsburgh_reads_the_netvlad_splits(tmp_path):
    colours, utm = write_pittsburgh(tmp_path, Palette(), '30k', ('train', 'val', 'test'))
    dataset = load_dataset('pittsburgh', root=tmp_path)
    assert dataset.name == 'pitts30k' and len(dataset) == 9
    assert list(dataset.splits) == ['train'] * 3 + ['val'] * 3 + ['test'] * 3
    assert list(dataset.roles) == ['database', 'database', 'query'] * 3
    assert dataset.frame['zone'] == '17T' and dataset.frame['positive_distance_m'] == 25.0
    assert dataset.describe()['ground_truth'] == 'positions'
    for offset, split in zip((0, 3, 6), ('train', 'val', 'test')):
        expected = np.concatenate(utm[split])
        np.testing.assert_allclose(dataset.positions_m[offset:offset + 3, :2], expected)
        database, queries = colours[split]
        for row, rgb in enumerate(database + queries):
            assert_image(dataset, offset + row, rgb)
    assert (dataset.positions_m[:, 2] == 0).all()
    # the query shares its name with a database image but lives under queries_real/
    assert 'queries_real' in dataset.image_paths[2]
    assert 'queries_real' not in dataset.image_paths[0]
    assert len(dataset.select(split='val', role='query')) == 1


def test_pittsburgh_250k_single_image_cells(tmp_path):
    # one database image and one query: loadmat squeezes the 1 x 1 cells to bare strings
    colours, utm = write_pittsburgh(tmp_path, Palette(), '250k', ('test',), database_count=1)
    dataset = load_dataset('pittsburgh', root=tmp_path, variant='250k', splits=('test',))
    assert dataset.name == 'pitts250k' and list(dataset.roles) == ['database', 'query']
    np.testing.assert_allclose(dataset.positions_m[:, :2], np.concatenate(utm['test']))
    assert_image(dataset, 0, colours['test'][0][0])
    assert_image(dataset, 1, colours['test'][1][0])


def test_pittsburgh_errors_name_the_missing_file(tmp_path):
    write_pittsburgh(tmp_path, Palette(), '30k', ('train',))
    with pytest.raises(DatasetLayoutError, match='pitts30k_val.mat'):
        load_dataset('pittsburgh', root=tmp_path, splits=('train', 'val'))
    (tmp_path / 'queries_real' / '000' / '000000_pitch1_yaw1.jpg').unlink()
    with pytest.raises(DatasetLayoutError, match='000/000000_pitch1_yaw1.jpg'):
        load_dataset('pittsburgh', root=tmp_path, splits=('train',))
    with pytest.raises(ValueError, match='variant'):
        load_dataset('pittsburgh', root=tmp_path, variant='100k')


def test_dbstruct_count_mismatch_is_reported(tmp_path):
    write_pittsburgh(tmp_path, Palette(), '30k', ('train',))
    path = tmp_path / 'datasets' / 'pitts30k_train.mat'
    write_dbstruct(path, 'train', ['000/000000_pitch1_yaw1.jpg'], [[1.0, 2.0]],
                   ['000/000000_pitch1_yaw1.jpg'], [[1.0, 2.0]])
    from scipy.io import loadmat
    struct = loadmat(str(path))['dbStruct']
    struct['numImages'][0, 0] = np.array([[5.0]])
    savemat(str(path), {'dbStruct': struct})
    with pytest.raises(DatasetLayoutError, match='numImages is 5'):
        load_dataset('pittsburgh', root=tmp_path, splits=('train',))


# --- tokyo247 -------------------------------------------------------------------------------

def write_tokyo247(root, palette):
    database = ['03814/pano0000000000000000001_012_000.jpg',
                '03814/pano0000000000000000001_012_030.jpg']
    queries = ['00001.jpg', '00002.jpg', '00003.jpg']
    # the release ships the database as PNG files although the dbStruct names them .jpg
    database_colours = [write_image(root / name.replace('.jpg', '.png'), palette())
                        for name in database]
    query_colours = [write_image(root / '247query_subset_v2' / name, palette())
                     for name in queries]
    utm_database = [[381400.0, 3950000.0], [381400.0, 3950000.0]]
    utm_queries = [[381405.0, 3950003.0], [381410.0, 3950006.0], [381415.0, 3950009.0]]
    write_dbstruct(root / 'datasets' / 'tokyo247.mat', 'test', database, utm_database,
                   queries, utm_queries)
    return database_colours + query_colours, np.array(utm_database + utm_queries)


def test_tokyo247_reads_png_database_and_query_conditions(tmp_path):
    colours, utm = write_tokyo247(tmp_path, Palette())
    dataset = load_dataset('tokyo247', root=tmp_path)
    assert list(dataset.roles) == ['database'] * 2 + ['query'] * 3
    assert set(dataset.splits) == {'test'} and dataset.frame['zone'] == '54S'
    assert dataset.image_paths[0].endswith('03814/pano0000000000000000001_012_000.png')
    np.testing.assert_allclose(dataset.positions_m[:, :2], utm)
    for row, rgb in enumerate(colours):
        assert_image(dataset, row, rgb)
    assert list(dataset.conditions) == [''] * 5   # numbered names do not say the time
    labels = tmp_path / 'query_conditions.csv'
    labels.write_text('name,condition\n00001.jpg,day\n00002.jpg,sunset\n00003,night\n'
                      '00003.jpg,night\n')
    labelled = load_dataset('tokyo247', root=tmp_path, query_conditions_csv=str(labels))
    assert list(labelled.conditions) == ['', '', 'day', 'sunset', 'night']
    labels.write_text('name,condition\n00001.jpg,dawn\n')
    with pytest.raises(DatasetLayoutError, match="unknown condition.*'dawn'"):
        load_dataset('tokyo247', root=tmp_path, query_conditions_csv=str(labels))


def test_tokyo247_time_of_day_from_the_query_path():
    assert time_of_day('night/00003.jpg') == 'night'
    assert time_of_day('247query_v3/00002_sunset.jpg') == 'sunset'
    assert time_of_day('daytime/00001.jpg') == 'day'
    assert time_of_day('00001.jpg') == ''
    assert time_of_day('holiday/00001.jpg') == ''   # a word, not a substring


def test_tokyo247_missing_specification(tmp_path):
    with pytest.raises(DatasetLayoutError, match='tokyo247.mat'):
        load_dataset('tokyo247', root=tmp_path)


# --- tokyo_tm -------------------------------------------------------------------------------

def write_tokyo_tm(root, palette, split, prefix):
    database = [f'{prefix}/p1_201105.jpg', f'{prefix}/p2_201105.jpg', f'{prefix}/p1_201301.jpg']
    colours = [write_image(root / 'images' / name, palette()) for name in database]
    utm = [[386000.0, 3952000.0], [386040.0, 3952000.0], [386001.0, 3952001.0]]
    # TM queries are drawn from the database panoramas themselves
    write_dbstruct(root / 'datasets' / f'tokyoTM_{split}.mat', split, database, utm,
                   [database[2]], [utm[2]], database_stamps=[201105, 201105, 201301],
                   query_stamps=[201301])
    return colours


def test_tokyo_tm_time_stamps_become_sequences(tmp_path):
    palette = Palette()
    train, val = write_tokyo_tm(tmp_path, palette, 'train', 'a'), write_tokyo_tm(
        tmp_path, palette, 'val', 'b')
    dataset = load_dataset('tokyo_tm', root=tmp_path)
    assert list(dataset.splits) == ['train'] * 4 + ['val'] * 4
    assert list(dataset.roles) == ['database'] * 3 + ['query'] + ['database'] * 3 + ['query']
    assert list(dataset.sequences[:4]) == ['201105', '201105', '201301', '201301']
    assert dataset.image_paths[3] == dataset.image_paths[2]
    np.testing.assert_allclose(dataset.positions_m[3, :2], [386001.0, 3952001.0])
    for row, rgb in enumerate(train + [train[2]] + val + [val[2]]):
        assert_image(dataset, row, rgb)
    assert len(load_dataset('tokyo_tm', root=tmp_path, splits=('val',))) == 4


def test_tokyo_tm_needs_time_stamps(tmp_path):
    write_pittsburgh(tmp_path, Palette(), '30k', ('train',))
    (tmp_path / 'datasets' / 'pitts30k_train.mat').rename(
        tmp_path / 'datasets' / 'tokyoTM_train.mat')
    with pytest.raises(DatasetLayoutError, match='dbTimeStamp'):
        load_dataset('tokyo_tm', root=tmp_path, splits=('train',))


# --- msls -----------------------------------------------------------------------------------

POSTPROCESSED = ['key', 'unique_cluster', 'easting', 'northing', 'night', 'control_panel',
                 'view_direction']
RAW = ['key', 'lon', 'lat', 'ca', 'captured_at', 'pano']
SEQ_INFO = ['key', 'sequence_key', 'frame_number']


def write_msls_side(folder, palette, images, with_ground_truth=True):
    """images: (key, sequence_key, easting, northing, night, pano) per image."""
    colours = {key: write_image(folder / 'images' / f'{key}.jpg', palette())
               for key, *_ in images}
    write_csv(folder / 'seq_info.csv', SEQ_INFO,
              [(key, sequence, frame) for frame, (key, sequence, *_) in enumerate(images)])
    if with_ground_truth:
        write_csv(folder / 'postprocessed.csv', POSTPROCESSED,
                  [(key, 0, east, north, night, False, 'Forward')
                   for key, _, east, north, night, _ in images])
        write_csv(folder / 'raw.csv', RAW, [(key, 0.0, 0.0, 90.0, 1500000000000, pano)
                                            for key, *_, pano in images])
    return colours


def write_msls(root, palette):
    colours = {}
    london = root / 'train_val' / 'london'
    colours.update(write_msls_side(london / 'database', palette, [
        ('k1', 'seqA', 699000.0, 5710000.0, False, False),
        ('k2', 'seqA', 699005.0, 5710002.0, False, False),
        ('k3', 'seqB', 699100.0, 5710100.0, False, True)]))     # a panorama
    colours.update(write_msls_side(london / 'query', palette, [
        ('q1', 'seqC', 699001.0, 5710001.0, True, False)]))
    cph = root / 'train_val' / 'cph'
    colours.update(write_msls_side(cph / 'database', palette, [
        ('c1', 'seqD', 347000.0, 6175000.0, False, False)]))
    colours.update(write_msls_side(cph / 'query', palette, [
        ('c2', 'seqE', 347002.0, 6175001.0, False, False)]))
    miami = root / 'test' / 'miami'
    colours.update(write_msls_side(miami / 'database', palette, [
        ('m1', 'seqF', 0, 0, False, False)], with_ground_truth=False))
    colours.update(write_msls_side(miami / 'query', palette, [
        ('m2', 'seqG', 0, 0, False, False)], with_ground_truth=False))
    return colours


def key_of(path):
    return path.rsplit('/', 1)[-1][:-len('.jpg')]


def test_msls_cities_splits_conditions_sequences(tmp_path):
    colours = write_msls(tmp_path, Palette())
    dataset = load_dataset('msls', root=tmp_path)
    keys = [key_of(path) for path in dataset.image_paths]
    assert sorted(keys) == ['c1', 'c2', 'k1', 'k2', 'q1']          # no panorama, no test city
    by_key = dict(zip(keys, range(len(keys))))
    assert [dataset.splits[by_key[k]] for k in ('k1', 'q1', 'c1', 'c2')] == [
        'train', 'train', 'val', 'val']
    assert [dataset.roles[by_key[k]] for k in ('k1', 'q1', 'c1', 'c2')] == [
        'database', 'query', 'database', 'query']
    assert dataset.conditions[by_key['q1']] == 'night'
    assert dataset.conditions[by_key['k1']] == 'day'
    assert dataset.sequences[by_key['k2']] == 'london/seqA'
    assert dataset.sequences[by_key['c2']] == 'cph/seqE'
    # each city's UTM frame is shifted far from the others, so mining never pairs cities
    offsets = dataset.frame['city_offsets_m']
    assert abs(offsets['london'] - offsets['cph']) >= 1e7
    np.testing.assert_allclose(dataset.positions_m[by_key['k2']],
                               [699005.0 + offsets['london'], 5710002.0, 0.0])
    for key, row in by_key.items():
        assert_image(dataset, row, colours[key])


def test_msls_options(tmp_path):
    write_msls(tmp_path, Palette())
    with_test = load_dataset('msls', root=tmp_path, include_test=True)
    test_rows = with_test.select(split='test')
    assert sorted(key_of(p) for p in test_rows.image_paths) == ['m1', 'm2']
    assert np.isnan(test_rows.positions_m).all() and list(test_rows.conditions) == ['', '']
    assert list(test_rows.sequences) == ['miami/seqF', 'miami/seqG']
    panoramas = load_dataset('msls', root=tmp_path, cities='london', exclude_panoramas=False)
    assert sorted(key_of(p) for p in panoramas.image_paths) == ['k1', 'k2', 'k3', 'q1']
    all_train = load_dataset('msls', root=tmp_path, cities=['cph'], val_cities=())
    assert set(all_train.splits) == {'train'}
    with pytest.raises(DatasetLayoutError, match=r"\['paris'\].*found \['cph', 'london', "):
        load_dataset('msls', root=tmp_path, cities=['paris'])


def test_msls_missing_sequence_info(tmp_path):
    write_msls(tmp_path, Palette())
    (tmp_path / 'train_val' / 'cph' / 'query' / 'seq_info.csv').unlink()
    with pytest.raises(DatasetLayoutError, match='cph/query/seq_info.csv'):
        load_dataset('msls', root=tmp_path)


# --- nordland ---------------------------------------------------------------------------

def test_nordland_season_folders(tmp_path):
    palette = Palette()
    colours = {(season, frame): write_image(tmp_path / season / f'{frame:05d}.png', palette())
               for season in ('summer', 'winter', 'spring') for frame in (3, 1, 2)}
    dataset = load_dataset('nordland', root=tmp_path)
    assert list(dataset.conditions) == ['summer'] * 3 + ['spring'] * 3 + ['winter'] * 3
    assert list(dataset.roles) == ['database'] * 3 + ['query'] * 6
    assert list(dataset.place_ids) == [1, 2, 3] * 3
    assert set(dataset.splits) == {'test'} and dataset.describe()['ground_truth'] == 'place_ids'
    for row, (season, place) in enumerate(zip(dataset.conditions, dataset.place_ids)):
        assert_image(dataset, row, colours[(season, place)])
    winter = load_dataset('nordland', root=tmp_path, database_season='winter',
                          query_seasons=['summer'], split='train')
    assert list(winter.conditions) == ['winter'] * 3 + ['summer'] * 3
    assert set(winter.splits) == {'train'}
    with pytest.raises(DatasetLayoutError, match='fall'):
        load_dataset('nordland', root=tmp_path, database_season='fall')


def test_nordland_partitioned_release(tmp_path):
    palette = Palette()
    frames = {'train': (1, 2), 'test': (15001,)}
    colours = {}
    for part, numbers in frames.items():
        for season in ('summer', 'winter'):
            for number in numbers:
                # section folders out of frame order: rows still follow the frame number
                section = f'section{3 - number if number < 3 else 1}'
                path = tmp_path / part / f'{season}_images_{part}' / section / f'{number}.png'
                colours[(season, number)] = write_image(path, palette())
    dataset = load_dataset('nordland', root=tmp_path)
    assert list(dataset.splits) == ['train'] * 4 + ['test'] * 2
    assert list(dataset.place_ids) == [1, 2, 1, 2, 15001, 15001]
    assert list(dataset.roles) == ['database', 'database', 'query', 'query', 'database', 'query']
    for row, (season, place) in enumerate(zip(dataset.conditions, dataset.place_ids)):
        assert_image(dataset, row, colours[(season, place)])
    test_only = load_dataset('nordland', root=tmp_path, split='test')
    assert list(test_only.place_ids) == [15001, 15001]


# --- gardenspoint ---------------------------------------------------------------------------

def write_gardenspoint(root, palette, traversals=('day_left', 'day_right', 'night_right')):
    return {(traversal, frame): write_image(root / traversal / f'Image{frame:03d}.jpg',
                                            palette())
            for traversal in traversals for frame in range(3)}


def test_gardenspoint_traversals(tmp_path):
    colours = write_gardenspoint(tmp_path, Palette())
    dataset = load_dataset('gardenspoint', root=tmp_path)
    assert list(dataset.sequences) == ['day_right'] * 3 + ['day_left'] * 3 + ['night_right'] * 3
    assert list(dataset.conditions) == ['day'] * 6 + ['night'] * 3
    assert list(dataset.roles) == ['database'] * 3 + ['query'] * 6
    assert list(dataset.place_ids) == [0, 1, 2] * 3
    for row, (traversal, place) in enumerate(zip(dataset.sequences, dataset.place_ids)):
        assert_image(dataset, row, colours[(traversal, place)])


def test_gardenspoint_errors(tmp_path):
    palette = Palette()
    write_gardenspoint(tmp_path, palette, traversals=('day_left', 'day_right'))
    with pytest.raises(DatasetLayoutError, match='night_right'):
        load_dataset('gardenspoint', root=tmp_path)
    with pytest.raises(ValueError, match='unknown GardensPoint traversal'):
        load_dataset('gardenspoint', root=tmp_path, query_traversals=('dusk_left',))
    write_image(tmp_path / 'day_left' / 'copy_of_Image001.png', palette())
    with pytest.raises(DatasetLayoutError, match=r'day_left: frame number\(s\) \[1\]'):
        load_dataset('gardenspoint', root=tmp_path, query_traversals='day_left')


# --- sped / stlucia (VPR-Bench) -------------------------------------------------------------

def write_vpr_bench(root, palette, reference_count, rows):
    references = [write_image(root / 'ref' / f'{k}.jpg', palette())
                  for k in range(reference_count)]
    queries = [write_image(root / 'query' / f'{k}.jpg', palette()) for k in range(len(rows))]
    ground_truth = np.empty((len(rows), 2), dtype=object)
    for index, (query, matches) in enumerate(rows):
        ground_truth[index, 0], ground_truth[index, 1] = query, list(matches)
    np.save(root / 'ground_truth_new.npy', ground_truth, allow_pickle=True)
    return references, queries


@pytest.mark.parametrize('kind', ['sped', 'stlucia'])
def test_vpr_bench_positives_need_the_pickle_opt_in(tmp_path, kind):
    # 12 references so that natural order (2 before 10) differs from text order
    references, queries = write_vpr_bench(tmp_path, Palette(), 12,
                                          [(0, [10, 2]), (1, [11]), (2, [0, 1])])
    with pytest.raises(ValueError, match='allow_pickle=True'):
        load_dataset(kind, root=tmp_path)
    dataset = load_dataset(kind, root=tmp_path, allow_pickle=True)
    assert dataset.name == kind and len(dataset) == 15
    assert list(dataset.roles) == ['database'] * 12 + ['query'] * 3
    assert [list(p) for p in dataset.positives[12:]] == [[2, 10], [11], [0, 1]]
    assert all(len(p) == 0 for p in dataset.positives[:12])
    assert dataset.describe()['ground_truth'] == 'positives'
    for row, rgb in enumerate(references + queries):
        assert_image(dataset, row, rgb)


def test_vpr_bench_numeric_ground_truth_needs_no_opt_in(tmp_path):
    write_vpr_bench(tmp_path, Palette(), 3, [(0, [1]), (1, [2])])
    np.save(tmp_path / 'ground_truth_new.npy', np.array([[0, 1], [1, 2]], np.int64))
    dataset = load_dataset('sped', root=tmp_path)
    assert [list(p) for p in dataset.positives[3:]] == [[1], [2]]


def test_vpr_bench_errors(tmp_path):
    write_vpr_bench(tmp_path, Palette(), 2, [(0, [5])])
    with pytest.raises(DatasetLayoutError, match='out of range'):
        load_dataset('stlucia', root=tmp_path, allow_pickle=True)
    (tmp_path / 'ground_truth_new.npy').unlink()
    with pytest.raises(DatasetLayoutError, match='ground_truth_new.npy'):
        load_dataset('stlucia', root=tmp_path, allow_pickle=True)
