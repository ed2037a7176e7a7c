"""ament_python package vl_attention (the repository root is the package root)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'vl_attention'

setup(
    name=PACKAGE,
    version='0.1.0',
    # the top-level training/ folder is the vl_attention.training package (package_dir maps it;
    # subpackages follow their parent's directory)
    packages=find_packages(include=[PACKAGE, f'{PACKAGE}.*']) + [f'{PACKAGE}.training'] + [
        f'{PACKAGE}.training.{name}' for name in find_packages('training')],
    package_dir={f'{PACKAGE}.training': 'training'},
    # trained heads (state dicts of heads only) and their model cards
    package_data={PACKAGE: ['models/shipped/*.pt', 'models/shipped/*.json']},
    data_files=[
        ('share/ament_index/resource_index/packages', [f'resource/{PACKAGE}']),
        (f'share/{PACKAGE}', ['package.xml']),
        (f'share/{PACKAGE}/launch', glob('launch/*.launch.py')),
        (f'share/{PACKAGE}/config', glob('config/*.yaml')),
        (f'share/{PACKAGE}/config/models', glob('config/models/*.yaml')),
        (f'share/{PACKAGE}/config/training', glob('config/training/*.yaml')),
        (f'share/{PACKAGE}/config/dds', glob('config/dds/*.xml')),
    ],
    install_requires=['setuptools'],
    zip_safe=False,
    maintainer='vl_attention maintainers',
    maintainer_email='maintainers@vl-attention.invalid',
    description='Long-term visual localization with attention-based global descriptors',
    license='Apache-2.0',
    extras_require={'test': ['pytest']},
    entry_points={
        'console_scripts': [
            'localize_node = vl_attention.ros.node:main',
            'localize_lifecycle_node = vl_attention.ros.lifecycle:main',
            'vl-attention = vl_attention.cli:main',
        ],
    },
)
